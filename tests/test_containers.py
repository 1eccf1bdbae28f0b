"""policy.containers: the one container model and its codec (argv <-> model <-> inspect)."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from phasegate.policy.containers import (
    MODELS_MOUNT,
    VLLM_NAME,
    VLLM_PORT,
    Container,
    Gpus,
    LiveContainer,
    differences,
    replica_name,
)
from phasegate.policy.plan import load_plan
from phasegate.policy.transition import vllm_containers

PLAN = load_plan()
ALL_PLANNED = [c for phase in PLAN.phases for c in vllm_containers(PLAN, phase)]

# The seed's scale_phase1_to_2.sh, as written there.
SEED_PHASE_2 = ("run -d --name vllm-server --gpus all --restart always -p 8000:8000 "
                "-v /models:/models vllm/vllm-openai:latest --model /models/Llama-2-13b-chat-hf "
                "--tensor-parallel-size 2 --gpu-memory-utilization 0.9 --max-model-len 4096")


def inspect_obj(*, name: str = "vllm-server", image: str = "vllm/vllm-openai:latest",
                cmd: list[str] | None = None, count: int = -1, ids: list[str] | None = None,
                port: str = "8000", ipc: str = "host", binds: list[str] | None = None,
                restart: str = "always", running: bool = True) -> dict[str, Any]:
    """One element of `docker inspect NAME` as Docker Engine 24 prints it (trimmed)."""
    return {
        "Id": "4f1c0e1d2b3a", "Name": f"/{name}",
        "State": {"Status": "running" if running else "exited", "Running": running},
        "HostConfig": {
            "Binds": binds if binds is not None else ["/models:/models"],
            "PortBindings": {"8000/tcp": [{"HostIp": "", "HostPort": port}]},
            "RestartPolicy": {"Name": restart, "MaximumRetryCount": 0},
            "IpcMode": ipc,
            "DeviceRequests": [{"Driver": "", "Count": count, "DeviceIDs": ids,
                                "Capabilities": [["gpu"]], "Options": {}}],
        },
        "Config": {"Image": image, "Cmd": cmd or ["--model", "/models/m"],
                   "Entrypoint": ["python3", "-m", "vllm.entrypoints.openai.api_server"]},
    }


def test_the_seeds_names_are_defined_once() -> None:
    assert (VLLM_NAME, VLLM_PORT, MODELS_MOUNT) == ("vllm-server", 8000, "/models:/models")
    assert [replica_name(k) for k in range(3)] == ["vllm-server", "vllm-server-1",
                                                   "vllm-server-2"]


@pytest.mark.parametrize("container", ALL_PLANNED,
                         ids=[f"{c.host}-{c.name}-{c.host_port}" for c in ALL_PLANNED])
def test_every_planned_container_round_trips(container: Container) -> None:
    assert Container.from_run_argv(container.host, container.run_argv()) == container
    assert Container.from_dict(json.loads(json.dumps(container.to_dict()))) == container
    assert shlex.split(container.command())[1:] == container.run_argv()


@pytest.mark.parametrize(("flag", "gpus", "indices", "again"), [
    ('"device=0,1"', Gpus(("0", "1")), (0, 1), '"device=0,1"'),
    ("device=2", Gpus(("2",)), (2,), '"device=2"'),
    ("all", Gpus((), -1), None, "all"),
    ("2", Gpus((), 2), None, "count=2"),
    ("count=3", Gpus((), 3), None, "count=3"),
    ("count=all", Gpus((), -1), None, "all"),
    ('"device=GPU-1a2b,GPU-3c4d"', Gpus(("GPU-1a2b", "GPU-3c4d")), None,
     '"device=GPU-1a2b,GPU-3c4d"'),
])
def test_gpus_flag(flag: str, gpus: Gpus, indices: tuple[int, ...] | None, again: str) -> None:
    assert Gpus.parse_flag(flag) == gpus
    assert gpus.indices == indices
    assert gpus.flag() == again
    assert Gpus.from_json(json.loads(json.dumps(gpus.to_json()))) == gpus


@pytest.mark.parametrize(("a", "b", "overlap"), [
    (Gpus.of(0), Gpus.of(1), False),
    (Gpus.of(0, 1), Gpus.of(1, 2), True),
    (Gpus((), -1), Gpus.of(3), True),             # "all": which devices is not known
    (Gpus(("GPU-1a2b",)), Gpus.of(0), True),        # a UUID could be device 0
])
def test_gpu_overlap_assumes_the_worst_when_unknown(a: Gpus, b: Gpus, overlap: bool) -> None:
    assert a.overlaps(b) is overlap and b.overlaps(a) is overlap


def test_the_seeds_own_command_parses_and_differs_from_the_plan_where_it_should() -> None:
    seed = Container.from_run_argv("gpu-1", SEED_PHASE_2.split())
    assert (seed.name, seed.host_port, seed.restart, seed.ipc, seed.volumes) == (
        "vllm-server", 8000, "always", None, ("/models:/models",))
    assert seed.gpus == Gpus((), -1)
    planned = vllm_containers(PLAN, 2)[0]
    # The plan pins the devices, keeps host IPC and names the served model.
    assert differences(seed, planned) == ["args", "gpus", "ipc"]


def test_option_forms_are_read_as_docker_reads_them() -> None:
    argv = ["run", "-d", "--name=x", "--publish", "127.0.0.1:9000:8000/tcp", "--ipc=private",
            "--volume", "/m:/models:ro", "-e", "A=1", "img:1", "--model", "/models/m"]
    c = Container.from_run_argv("h", argv)
    assert (c.name, c.host_port, c.ipc, c.volumes, c.gpus, c.restart) == (
        "x", 9000, None, ("/m:/models:ro",), None, "no")
    assert c.args == ("--model", "/models/m") and c.served_model == "/models/m"


@pytest.mark.parametrize("argv", [["run", "-d", "img"], ["run", "--name", "x"]])
def test_an_argv_without_name_or_image_is_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError, match="needs --name and an image"):
        Container.from_run_argv("h", argv)


def test_inspect_of_a_planned_container_reads_back_as_planned() -> None:
    planned = vllm_containers(PLAN, 3, {"gpu-1": 18000})[2]
    obj = inspect_obj(name=planned.name, cmd=list(planned.args), count=0, ids=["2"],
                      port="18002")
    live = Container.from_inspect("gpu-1", obj)
    assert live == LiveContainer(planned, running=True)
    assert differences(live.container, planned) == []


@pytest.mark.parametrize(("changes", "fields"), [
    ({"image": "vllm/vllm-openai:v0.6.3"}, ["image"]),
    ({"cmd": ["--model", "/models/other"]}, ["args"]),
    ({"ids": ["0", "1"], "count": 0}, ["gpus"]),
    ({"port": "8001"}, ["host_port"]),
    ({"ipc": "private"}, ["ipc"]),
    ({"binds": []}, ["volumes"]),
    ({"restart": "no", "running": False}, []),   # not what makes it another server
])
def test_differences_name_the_field(changes: dict[str, Any], fields: list[str]) -> None:
    base = {"count": 0, "ids": ["0"], "cmd": ["--model", "/models/m"]}
    wanted = Container.from_inspect("gpu-1", inspect_obj(**base)).container
    found = Container.from_inspect("gpu-1", inspect_obj(**{**base, **changes})).container
    assert differences(found, wanted) == fields


def test_inspect_defaults_and_all_gpus() -> None:
    live = Container.from_inspect("gpu-1", inspect_obj(ipc="shareable", running=False))
    assert live.running is False
    assert live.container.ipc is None and live.container.gpus == Gpus((), -1)
    bare = {"Name": "/x", "Config": {"Image": "i"}, "State": {"Running": True}}
    c = Container.from_inspect("h", bare).container
    assert (c.gpus, c.host_port, c.volumes, c.restart, c.args) == (None, None, (), "no", ())


def test_snapshots_written_before_the_model_still_read() -> None:
    # The snapshot form tasks wrote before this model: gpus as a list or "all".
    old = {"host": "gpu-1", "name": "vllm-server", "image": "img", "args": ["--model", "m"],
           "gpus": "all", "host_port": 8000, "ipc": None, "running": True, "restart": "always",
           "volumes": ["/models:/models"]}
    c = Container.from_dict(old)
    assert c.gpus == Gpus((), -1) and c.restart == "always" and c.ipc is None
    assert Container.from_dict({**old, "gpus": [0]}).gpus == Gpus.of(0)
