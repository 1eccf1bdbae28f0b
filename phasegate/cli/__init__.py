"""The `phasegate` command line (the top layer): `main` parses and dispatches; one module per
area registers its subcommands. Only `phasegate.cli.lab` and `phasegate.cli.demo` import the lab."""
