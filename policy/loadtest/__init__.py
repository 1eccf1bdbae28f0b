"""The pure half of the load-test engine: k6 scenarios and their schedules, metric sinks and
the store, thresholds and their verdicts, the summary. No clock, no I/O: numbers in, decisions
out. The engine (phasegate/loadtest/) drives the clock and the sockets; docs/loadtest.md draws
the line between the two.
"""
