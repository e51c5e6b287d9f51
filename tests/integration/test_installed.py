"""Keel as the Docker image runs it, without a Docker engine: a non-editable ``pip install`` of
the package into a fresh venv, the source tree removed, a working directory that holds no
code, a non-root user; then ``keel migrate`` and ``keel serve`` until ``/readyz`` is 200.

The fresh venv gets Keel's dependencies by pointing at this venv's site-packages (a ``.pth``
line, which adds the directory but not its editable-install hooks), so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.servers import ROOT, free_port

pytestmark = pytest.mark.slow

NOBODY = 65534


@pytest.fixture(scope="module")
def image() -> Iterator[Path]:
    """The image's layout under a world-readable temporary root (pytest's own tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="keel-image-"))
    root.chmod(0o755)
    try:
        src = root / "src"  # what the Dockerfile copies: pyproject, README, app/
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src / name)
        shutil.copytree(ROOT / "app", src / "app", ignore=shutil.ignore_patterns("__pycache__"))
        venv = root / "venv"
        subprocess.run([_base_python(), "-m", "venv", "--without-pip", str(venv)], check=True)
        deps = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        (deps / "site-packages" / "keel-deps.pth").write_text(
            "\n".join(site.getsitepackages()) + "\n"
        )
        # pip comes through the .pth line, setuptools from the build isolation (warm cache);
        # --ignore-installed so pip never touches the editable Keel it can also see there.
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--ignore-installed",
                "--disable-pip-version-check",
                "--no-compile",
                str(src),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        shutil.rmtree(src)  # the image removes the source after installing
        yield venv
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _world_reachable(path: Path) -> bool:
    return all(p.stat().st_mode & 0o005 == 0o005 for p in [path, *path.parents][:-1])


def _base_python() -> str:
    """This interpreter, or, when a non-root user could not run it (pyenv under /root), the
    system's interpreter of the same minor version, as the image's /usr/local python is."""
    mine = Path(sys.executable).resolve()
    if os.geteuid() != 0 or _world_reachable(mine.parent):
        return sys.executable
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    return str(system) if system.exists() else sys.executable


def _env(venv: Path, data: Path, port: int) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "PYTHON"))}
    return {
        **clean,
        "PATH": f"{venv / 'bin'}:{clean.get('PATH', '')}",
        "KEEL_DATA_DIR": str(data),
        "KEEL_PORT": str(port),
        "KEEL_LOG_FORMAT": "json",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _as_image_user(venv: Path) -> int | None:
    """The image's ``USER``: a non-root uid when the tests run as root (containers, CI) and
    that user can run the venv's interpreter; None keeps the current user."""
    if os.geteuid() != 0 or not _world_reachable((venv / "bin" / "python").resolve().parent):
        return None
    return NOBODY


def test_non_editable_install_migrates_and_serves_from_another_directory(
    image: Path, tmp_path: Path
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="keel-workdir-"))  # like /srv/keel: no code in it
    data = workdir / "data"
    data.mkdir()
    user = _as_image_user(image)
    if user:
        for path in (workdir, data):
            os.chown(path, NOBODY, NOBODY)
    port = free_port()
    env = _env(image, data, port)
    python = str(image / "bin" / "python")
    try:
        where = subprocess.run(
            [python, "-c", "import app.store.migrate as m; print(m.__file__, m.MIGRATIONS_DIR)"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            user=user,
            group=user,
        ).stdout.split()
        assert all(p.startswith(str(image)) for p in where), where  # the install, not the clone
        assert str(ROOT) not in " ".join(where)

        migrate = subprocess.run(
            [str(image / "bin" / "keel"), "migrate"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            user=user,
            group=user,
        )
        assert migrate.returncode == 0, migrate.stderr[-2000:]
        assert "migrated" in migrate.stdout

        # The deploy step above, then serving without migrating: /readyz 200 proves the
        # schema is there. Then the image's own start on an empty volume: serve migrates.
        fresh = workdir / "fresh"
        fresh.mkdir()
        if user:
            os.chown(fresh, NOBODY, NOBODY)
        for run_env in (
            {**env, "KEEL_AUTO_MIGRATE": "false"},
            {**env, "KEEL_DATA_DIR": str(fresh)},
        ):
            log = (tmp_path / "serve.log").open("wb")
            proc = subprocess.Popen(
                [str(image / "bin" / "keel"), "serve"],
                cwd=workdir,
                env=run_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=user,
                group=user,
            )
            log.close()
            try:
                status = _wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
                assert status == 200, (tmp_path / "serve.log").read_text()[-2000:]
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        assert (fresh / "keel.db").exists()
        assert (data / "keel.db").exists()
        if user:  # written by the image's user, not by root
            assert (data / "keel.db").stat().st_uid == NOBODY
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status = httpx.get(url, timeout=2.0).status_code
        except httpx.HTTPError:
            status = 0
        if status == 200:
            return status
        time.sleep(0.2)
    return status
