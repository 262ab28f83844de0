"""The runtime image: built from worker/hivemind_worker/runtime/Dockerfile, or on an offline base.

Labs with a registry build from the Dockerfile's default `FROM python:3.12-slim`. Air-gapped labs (and
machines like the ones this project is tested on) cannot pull it, so `--bootstrap` first builds a
Debian base with debootstrap from the distribution's package mirror and imports it with
`docker import`. Both paths end in the same image, tagged with the project's version.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from . import __version__
from .errors import WorkerError

log = logging.getLogger(__name__)

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
DOCKERFILE = RUNTIME_DIR / "Dockerfile"
RUNNER = RUNTIME_DIR / "runner.py"
RUNTIME_REPOSITORY = "hivemind-runtime"
BOOTSTRAP_TAG = "hivemind-base:bookworm"
BOOTSTRAP_SUITE = "bookworm"
BOOTSTRAP_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BUILD_STAGE_LABEL = "org.hivemind.stage=runtime-build"
# pip's lines worth showing while the image builds (the rest is noise)
_PIP_PROGRESS = ("Collecting ", "Installing collected packages", "Successfully installed")


BOOTSTRAP_PYTHON = "3.11"  # bookworm's python3
DEFAULT_PYTHON = "3.12"  # the Dockerfile's default base, python:3.12-slim


def runtime_tag(version: str = __version__, python: str = "") -> str:
    """The runtime image's tag for this version of the project, e.g. hivemind-runtime:0.1.0, or
    hivemind-runtime:0.1.0-py3.12 for a runtime of another Python built with --python."""
    return f"{RUNTIME_REPOSITORY}:{version}" + (f"-py{python}" if python else "")


def image_python(client: docker.DockerClient, tag: str, known: dict[str, str] | None = None) -> str:
    """The Python minor version of an image's python3, e.g. "3.11" (asked once per image id:
    `known` maps ids to versions and is updated)."""
    ident = image_id(client, tag)
    if known is not None and ident in known:
        return str(known[ident])
    output = client.containers.run(
        tag,
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        remove=True,
        network_mode="none",
        user="1000:1000",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
    )
    version = str(output.decode()).strip()
    if known is not None:
        known[ident] = version
    return version


def runtime_images(client: docker.DockerClient, default_tag: str, state_dir: Path) -> dict[str, str]:
    """The runtime images this worker runs tasks with, by Python minor version: the default
    (--image) first, then those `image build --python` tagged for this version of the project."""
    import json

    remembered = state_dir / "runtime-pythons.json"
    try:
        known = json.loads(remembered.read_text())
    except (OSError, ValueError):
        known = {}
    found = {image_python(client, default_tag, known): default_tag}
    prefix = runtime_tag() + "-py"
    for image in client.images.list(name=RUNTIME_REPOSITORY):
        for tag in image.tags:
            if tag.startswith(prefix):
                found.setdefault(image_python(client, tag, known), tag)
    from hivemind_nodepool.protocol.files import atomic_write

    atomic_write(remembered, json.dumps(known))
    return found


@dataclass
class BuildOptions:
    tag: str = ""
    base_image: str = ""  # empty: the Dockerfile's default (python:3.12-slim)
    bootstrap: bool = False  # make the base with debootstrap when it is missing
    network: str | None = None  # the build steps' network mode; None: see default_build_network
    ca_bundle: Path | None = None  # an extra CA bundle for pip; None: the host's (Path("none"): no)
    if_missing: bool = False  # do nothing when the tag already exists
    mirror: str | None = None  # debootstrap's mirror; None: debootstrap's default
    python: str = ""  # another Python minor version than the base's default (--python)

    def resolved_tag(self) -> str:
        return self.tag or runtime_tag(python=self.python)

    def resolved_base(self) -> str:
        """The base image: the admin's, else bootstrapped bookworm (--bootstrap), else the official
        slim image of the Python asked for. WorkerError where that Python cannot be had."""
        if self.bootstrap and not self.base_image and self.python not in ("", BOOTSTRAP_PYTHON):
            raise WorkerError(
                f"--bootstrap builds on Debian {BOOTSTRAP_SUITE}, whose python3 is {BOOTSTRAP_PYTHON}, "
                f"not {self.python}. Name a base image that has Python {self.python} with "
                f"--base-image (e.g. python:{self.python}-slim from your registry, or one imported "
                f"with `docker import`). Without a registry or such an image no other Python can be "
                "had offline."
            )
        if self.base_image:
            return self.base_image
        if self.bootstrap:
            return BOOTSTRAP_TAG
        return f"python:{self.python}-slim" if self.python else ""


def docker_client() -> docker.DockerClient:
    """A client of the local Docker engine, or WorkerError saying how to get one."""
    try:
        # Each running task holds two streams (its output, its exit): room for many tasks.
        client = docker.from_env(timeout=120, max_pool_size=64)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise WorkerError(
            f"the Docker engine does not answer ({exc}). Start Docker (scripts/start-docker.sh "
            "on these machines) or run the worker with --executor local."
        ) from None


def default_build_network(client: docker.DockerClient) -> str | None:
    """None (Docker's default) where the engine has a bridge network; "host" where it has none, as
    on engines started with --bridge=none, whose default network reaches nothing."""
    try:
        if client.networks.list(names=["bridge"]):
            return None
    except docker.errors.DockerException:
        return None
    return "host"


def default_ca_bundle() -> Path | None:
    """The CA bundle this host's pip trusts (PIP_CERT, then SSL_CERT_FILE, REQUESTS_CA_BUNDLE), so a
    build behind a TLS-inspecting proxy trusts what the host trusts."""
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(name)
        if value and os.path.isfile(value):
            return Path(value)
    return None


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


class _DebootstrapProgress:
    """Turns debootstrap's hundreds of "I: Retrieving x" lines into one line per phase."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.started = time.monotonic()
        self.phase = ""
        self.count = 0

    def __call__(self, line: str) -> None:
        if not line.startswith("I: "):
            return
        words = line[3:].split()
        phase = words[0] if words else ""
        if phase == self.phase:
            self.count += 1
            return
        self.phase, self.count = phase, 1
        self.say(f"  debootstrap: {line[3:].strip()[:100]} ({time.monotonic() - self.started:.0f}s)")


def _run_with_progress(command: list[str], on_line: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run a command, passing each line of its output to on_line; (exit code, last lines)."""
    tail: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            tail.append(line)
            del tail[:-50]
            on_line(line)
    return process.returncode, tail


def build_progress(text: str, say: Callable[[str], None]) -> None:
    """Show the build's steps and pip's main lines as they come (a build takes minutes)."""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Step "):
            say(f"  {line[:110]}")
        elif line.startswith(_PIP_PROGRESS):
            say(f"    pip: {line[:106]}")


def remove_build_stage(client: docker.DockerClient) -> list[str]:
    """Remove the untagged images the runtime build's first stage leaves (<none> in `docker images`);
    returns their ids. Tagged images and images still in use are kept."""
    removed = []
    for image in client.images.list(filters={"dangling": True, "label": BUILD_STAGE_LABEL}):
        try:
            client.images.remove(image.id, noprune=False)
            removed.append(str(image.id))
        except docker.errors.APIError as exc:  # a container uses it, or another build does
            log.debug("keeping build-stage image %s: %s", image.short_id, exc)
    return removed


def bootstrap_base(
    client: docker.DockerClient,
    tag: str = BOOTSTRAP_TAG,
    mirror: str | None = None,
    say: Callable[[str], None] = print,
) -> str:
    """Build a minimal Debian with Python by debootstrap and import it into Docker as `tag`."""
    if os.geteuid() != 0:
        raise WorkerError("--bootstrap runs debootstrap, which needs root")
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(debootstrap):
        raise WorkerError("--bootstrap needs debootstrap: apt-get install debootstrap")
    with tempfile.TemporaryDirectory(prefix="hivemind-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        command = [
            debootstrap,
            "--variant=minbase",
            "--include=" + ",".join(BOOTSTRAP_PACKAGES),
            BOOTSTRAP_SUITE,
            str(root),
        ]
        if mirror:
            command.append(mirror)
        say(f"bootstrapping a {BOOTSTRAP_SUITE} base with debootstrap (about a minute)")
        code, lines = _run_with_progress(command, _DebootstrapProgress(say))
        if code != 0:
            tail = "\n".join(lines[-15:])
            raise WorkerError(f"debootstrap failed (exit {code}):\n{tail}")
        # Package caches and docs only make the image bigger.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(root / junk, ignore_errors=True)
        say(f"importing the base into Docker as {tag}")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        try:
            client.api.import_image_from_stream(
                tar.stdout, repository=tag.partition(":")[0], tag=tag.partition(":")[2] or "latest"
            )
        finally:
            tar.stdout.close()
            tar.wait()
        if tar.returncode != 0:
            raise WorkerError(f"tar of the bootstrapped root failed (exit {tar.returncode})")
    return tag


def build_runtime(
    options: BuildOptions, client: docker.DockerClient | None = None, say: Callable[[str], None] = print
) -> str:
    """Build (or, with if_missing, find) the runtime image; returns its tag."""
    client = client or docker_client()
    tag = options.resolved_tag()
    if options.if_missing and image_exists(client, tag):
        say(f"{tag} is already built")
        return tag
    base = options.resolved_base()
    if options.bootstrap and not image_exists(client, base):
        bootstrap_base(client, base, options.mirror, say)
    build_args = {"HIVEMIND_VERSION": __version__}
    if base:
        build_args["BASE_IMAGE"] = base
    with tempfile.TemporaryDirectory(prefix="hivemind-build-") as tmp:
        context = Path(tmp)
        shutil.copy(DOCKERFILE, context / "Dockerfile")
        ca = context / "build-ca.pem"
        ca_bundle = options.ca_bundle if options.ca_bundle is not None else default_ca_bundle()
        if ca_bundle and str(ca_bundle) != "none":
            try:
                shutil.copy(ca_bundle, ca)
            except OSError as exc:
                raise WorkerError(f"cannot read the CA bundle {ca_bundle}: {exc.strerror}") from None
        else:
            ca.write_bytes(b"")
        say(f"building {tag}" + (f" from {base}" if base else ""))
        network = options.network if options.network is not None else default_build_network(client)
        stream = client.api.build(
            path=str(context),
            tag=tag,
            buildargs=build_args,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode=network,
            decode=True,
        )
        tail: list[str] = []
        try:
            for line in stream:
                if "error" in line:
                    raise WorkerError(
                        f"building {tag} failed: {line['error'].strip()}\n" + "".join(tail[-15:])
                    )
                text = line.get("stream", "")
                if text:
                    tail.append(text)
                    del tail[:-50]
                    log.debug("build: %s", text.rstrip())
                    build_progress(text, say)
        finally:
            if remove_build_stage(client):
                say("removed the build stage's intermediate image")
    if options.python:
        got = image_python(client, tag)
        if got != options.python:
            raise WorkerError(
                f"{tag} was built, but its python3 is {got}, not {options.python}: name a base image "
                f"with Python {options.python} (--base-image)"
            )
    say(f"built {tag}")
    return tag


def runtime_image_exists(tag: str | None = None) -> bool:
    """True when a Docker engine answers and has the runtime image (`hivemind up` asks this)."""
    try:
        client = docker.from_env(timeout=10)
        try:
            return image_exists(client, tag or runtime_tag())
        finally:
            client.close()
    except docker.errors.DockerException:
        return False


def image_id(client: docker.DockerClient, tag: str) -> str:
    """The image's content id (sha256:...), or WorkerError saying how to build it."""
    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        raise WorkerError(
            f"the runtime image {tag} is missing: run `hivemind-worker image build` "
            "(add --bootstrap where no registry is reachable)"
        ) from None
