"""The Docker executor's environments: an image per lock, the runtime image plus a layer with the
packages installed into the runtime's own venv, where tasks' python3 finds them.

The layer is made by running uv in a build container and committing it. Installing into the
runtime's venv (not a separate prefix) lets uv see the runtime's packages (papermill, ipykernel and
theirs), which a lock leaves out: its resolution keeps them and checks every pin's Requires-Python.
The build runs as root inside the container, without capabilities, since the venv is root's; the
committed image runs tasks as the runtime's user again. A lock that adds packages to a built one is
built on that environment's image: uv installs only what it adds, and the commit stores only that.

uv's binary comes from the worker's own `uv` package, bind-mounted read-only, so the runtime image
needs no installer. The
machine's package cache is bind-mounted as UV_CACHE_DIR; the admin's wheelhouse (--find-links) and
the bundle's wheels are mounted read-only. uv's settings reach it through a file the build script
sources, not the container's environment, which the commit would keep in the image (and an index
URL's credentials with it). The build container has network only for the build (as tasks do not).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .environment_request import EnvironmentRequest
from .environments import BUILD_TIMEOUT, STOP_POLL, Base, BuildReport, EnvironmentCache, StepClock
from .errors import BuildStopped, EnvironmentBuildError
from .uv import INSTALL_MARK, IndexSettings, StepParser, build_failure, install_args, uv_binary, uv_durations

log = logging.getLogger(__name__)

BUILD_USER = (0, 0)  # owns the runtime's venv; no capabilities, so only what root owns is writable
RUNTIME_PYTHON = "/opt/hivemind/venv/bin/python"  # the runtime's interpreter (runtime/Dockerfile)
UV = "/hivemind/bin/uv"
CACHE = "/hivemind/uv-cache"
WHEELHOUSE = "/hivemind/find-links"
REQ = "/hivemind/req"
CA = "/hivemind/ca.pem"


def shared_cache_usable(cache_dir: Path) -> bool:
    """Whether a build container's user (root without capabilities: it writes only what root owns)
    can write the machine's cache: where the worker runs as root. Elsewhere builds keep their own."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    return cache_dir.stat().st_uid == BUILD_USER[0]


class DockerEnvironments(EnvironmentCache):
    kind = "docker"
    REPOSITORY = "hivemind-env"

    def __init__(
        self,
        client: Any,
        runtimes: dict[str, str],
        state_dir: Path,
        size_limit: int,
        index: IndexSettings,
        *,
        worker_name: str = "",
        allowed_images: tuple[str, ...] = (),
        network: str | None = None,
        ca_bundle: Path | None = None,
    ) -> None:
        """runtimes: the runtime image's tag by Python minor version, the default first."""
        super().__init__(state_dir, size_limit, index, worker_name)
        self.client = client
        self.runtimes = runtimes
        self.allowed_images = allowed_images
        self.network = network
        self.ca_bundle = ca_bundle
        self._bases: dict[str, Base] | None = None
        self.last_build: StepClock | None = None  # where the last build's time went
        self._removals: list[threading.Thread] = []

    def bases(self) -> dict[str, Base]:
        if self._bases is None:
            from .image import image_id

            self._bases = {
                minor: Base(tag, image_id(self.client, tag), minor) for minor, tag in self.runtimes.items()
            }
        return self._bases

    def image_ref(self, request: EnvironmentRequest) -> str:
        import docker.errors

        if request.image not in self.allowed_images:
            allowed = ", ".join(self.allowed_images) or "none"
            raise EnvironmentBuildError(
                f"the image {request.image} is not allow-listed on {self.worker_name} (allowed: "
                f"{allowed}); its admin allows one with --allow-image"
            )
        try:
            self.client.images.get(request.image)
        except docker.errors.ImageNotFound:
            raise EnvironmentBuildError(
                f"the allow-listed image {request.image} is not on {self.worker_name}'s Docker engine: "
                f"its admin pulls or builds it"
            ) from None
        return request.image

    def tag(self, key: str) -> str:
        return f"{self.REPOSITORY}:{key[:24]}"

    def exists(self, key: str) -> str | None:
        import docker.errors

        try:
            image = self.client.images.get(self.tag(key))
        except docker.errors.ImageNotFound:
            return None
        return self.tag(key) if image.labels.get("org.hivemind.env") == key else None

    def _mounts(self, folder: Path, cache: bool) -> list[Any]:
        from docker.types import Mount

        # Mounts, not `volumes=`: the SDK would also declare those paths as image volumes,
        # and the commit would carry the declarations into the environment image.
        mounts = [
            Mount(REQ, str(folder), type="bind", read_only=True),
            Mount(UV, str(uv_binary().resolve()), type="bind", read_only=True),
        ]
        if cache:
            mounts.append(Mount(CACHE, str(self.index.cache_dir.resolve()), type="bind"))
        if self.index.find_links is not None:
            mounts.append(
                Mount(WHEELHOUSE, str(self.index.find_links.resolve()), type="bind", read_only=True)
            )
        ca_bundle = self._ca_bundle()
        if ca_bundle is not None:
            mounts.append(Mount(CA, str(ca_bundle.resolve()), type="bind", read_only=True))
        return mounts

    def _ca_bundle(self) -> Path | None:
        from .image import default_ca_bundle

        ca_bundle = self.ca_bundle if self.ca_bundle is not None else default_ca_bundle()
        return Path(ca_bundle) if ca_bundle and str(ca_bundle) != "none" else None

    def _script(self, folder: Path, request: EnvironmentRequest, cache: bool) -> None:
        """The build's inputs in one read-only folder: the requirements, uv's settings, the
        bundle's wheels and the script that runs the dry run (the plan) and the install."""
        (folder / "requirements.txt").write_bytes(request.text)
        links = [WHEELHOUSE] if self.index.find_links is not None else []
        if request.wheels:
            (folder / "wheels").mkdir()
            for wheel in request.wheels:
                shutil.copy(wheel.path, folder / "wheels" / wheel.path.name)
            links.append(f"{REQ}/wheels")
        args = install_args(
            RUNTIME_PYTHON,
            f"{REQ}/requirements.txt",
            prefix=None,
            exact=False,
            find_links=links,
        )
        command = " ".join([UV, *args])
        env = self.index.env_file(CACHE if cache else "/tmp/uv-cache")  # noqa: S108 (in the container)
        if self._ca_bundle() is not None:
            env += f"export SSL_CERT_FILE={CA}\n"
        (folder / "uv.env").write_text(env)
        (folder / "build.sh").write_text(
            "set -eu\n. /hivemind/req/uv.env\n"
            f"{command} --dry-run 2>&1\necho '{INSTALL_MARK}'\n{command} 2>&1\n"
        )
        for path in folder.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        folder.chmod(0o755)

    def build(
        self, key: str, request: EnvironmentRequest, base: Base, report: BuildReport, stop: threading.Event
    ) -> tuple[str, int]:
        from .image import default_build_network

        network = self.network if self.network is not None else default_build_network(self.client)
        cache = shared_cache_usable(self.index.cache_dir)
        if not cache:
            log.warning(
                "the package cache %s is not root's, so environment builds (root in their container) "
                "cannot share it: each downloads what it needs",
                self.index.cache_dir,
            )
        clock = StepClock()
        parent = self.closest(request, base)
        if parent is not None:
            report.step(f"adding to {parent}")
        with tempfile.TemporaryDirectory(prefix="hivemind-env-") as tmp:
            folder = Path(tmp)
            self._script(folder, request, cache)
            clock.lap("prepare")
            container = self.client.containers.create(
                parent or base.ref,
                command=["/bin/sh", f"{REQ}/build.sh"],
                user="{}:{}".format(*BUILD_USER),
                network_mode=network,
                mounts=self._mounts(folder, cache),
                tmpfs={"/tmp": "rw,nosuid,nodev,size=4g"},  # noqa: S108 (in the container)
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=1024,
                labels={"org.hivemind.role": "env-build", "org.hivemind.env": key},
            )
            clock.lap("container create")
            try:
                output = self._run(container, request, base, report, stop)
                clock.lap("container start and uv")
                self._commit(container, key)
                clock.lap("docker commit")
            except BaseException:
                container.remove(force=True)  # before the task ends: a stopped build leaves nothing
                raise
        self._remove_later(container)  # deleting its files takes a while, and nobody waits for it
        image = self.client.images.get(self.tag(key))
        runtime = self.client.images.get(parent or base.ref)  # what this layer adds to
        clock.lap("image inspect")
        clock.seconds.update(uv_durations(output))
        self.last_build = clock
        log.debug("environment %s built: %s", key[:12], clock.text())
        return self.tag(key), max(int(image.attrs.get("Size", 0)) - int(runtime.attrs.get("Size", 0)), 0)

    def _run(
        self,
        container: Any,
        request: EnvironmentRequest,
        base: Base,
        report: BuildReport,
        stop: threading.Event,
    ) -> str:
        parser = StepParser(report.step)
        output: list[str] = []

        def read() -> None:
            pending = b""
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    output.append(line + "\n")
                    parser.feed(line)
            if pending:
                output.append(pending.decode("utf-8", "replace"))

        reader = threading.Thread(target=read, name="env-build-log", daemon=True)
        container.start()
        reader.start()
        status = self._wait(container, reader, stop)
        code = int(status.get("StatusCode", 1))
        if code != 0:
            raise EnvironmentBuildError(
                build_failure("".join(output), self.index, base.python, request.python_version, code)
            )
        return "".join(output)

    @staticmethod
    def _wait(container: Any, reader: threading.Thread, stop: threading.Event) -> dict[str, Any]:
        """The build container's exit status, once its output ends; killed when stop is set
        (BuildStopped) or past the build timeout (EnvironmentBuildError). The caller removes it."""
        deadline = time.monotonic() + BUILD_TIMEOUT
        while reader.is_alive() and not stop.is_set() and time.monotonic() < deadline:
            stop.wait(STOP_POLL)
        if reader.is_alive():
            with contextlib.suppress(Exception):
                container.kill()
            if stop.is_set():
                raise BuildStopped("the task was stopped while its environment was being built")
            raise EnvironmentBuildError(f"building the environment took longer than {BUILD_TIMEOUT:.0f}s")
        status: dict[str, Any] = container.wait(timeout=max(deadline - time.monotonic(), 1.0))
        return status

    def _remove_later(self, container: Any) -> None:
        def remove() -> None:
            try:
                container.remove(force=True)
            except Exception as exc:
                log.warning("could not remove the build container %s: %s", container.id[:12], exc)

        thread = threading.Thread(target=remove, name="env-build-remove", daemon=True)
        thread.start()
        with self._guard:
            self._removals = [t for t in self._removals if t.is_alive()] + [thread]

    def close(self) -> None:
        with self._guard:
            removals = list(self._removals)
        for thread in removals:
            thread.join(timeout=30)

    def _commit(self, container: Any, key: str) -> None:
        repository, _, version = self.tag(key).partition(":")
        container.commit(
            pause=False,  # it has exited: nothing to pause
            repository=repository,
            tag=version,
            changes=[
                'CMD ["python3"]',
                "USER 1000:1000",
                "WORKDIR /task",
                f"LABEL org.hivemind.role=env org.hivemind.env={key}",
            ],
        )

    def remove(self, key: str, ref: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.ImageNotFound):
            self.client.images.remove(ref or self.tag(key), noprune=False)
