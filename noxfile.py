"""Sessions: tests (fast suite), slow (long cases), lint (ruff), build (wheels into a fresh venv)."""

from __future__ import annotations

import pathlib
import tempfile

import nox

ROOT = pathlib.Path(__file__).parent
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())
CONSTRAINTS = ("-c", str(ROOT / "constraints.txt"))

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


def _install_editable(session: nox.Session) -> None:
    editable = [arg for p in PACKAGES for arg in ("-e", str(p))]
    session.install(*CONSTRAINTS, *editable, "pytest", "tensorboard", "decord")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Every package's tests except those marked slow."""
    _install_editable(session)
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session(python="3.11")
def slow(session: nox.Session) -> None:
    """The slow tests only (multi-process runs of real-sized pieces)."""
    _install_editable(session)
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session(python="3.11")
def gpu(session: nox.Session) -> None:
    """The CUDA checks only (flash and varlen kernels, bf16, compile); run it on a machine with a GPU."""
    _install_editable(session)
    session.run("pytest", "-m", "cuda", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", ".")


@nox.session(python="3.11", reuse_venv=False)
def build(session: nox.Session) -> None:
    """Build each package's wheel, install the wheels into this fresh venv, check `mm plugins --hooks` imports them."""
    session.install(*CONSTRAINTS, "build")
    with tempfile.TemporaryDirectory() as dist:
        for package in PACKAGES:
            session.run("python", "-m", "build", "--wheel", "--outdir", dist, str(package))
        wheels = sorted(str(w) for w in pathlib.Path(dist).glob("*.whl"))
        if len(wheels) != len(PACKAGES):
            session.error(f"built {len(wheels)} wheels for {len(PACKAGES)} packages")
        session.install(*CONSTRAINTS, *wheels)
    # --hooks imports every plugin: a wheel missing a module fails here, not at a user's first run.
    listing = session.run("mm", "plugins", "--hooks", silent=True)
    print(listing)
    missing = [name for name in _declared_plugins() if name not in listing]
    if missing:
        session.error(f"mm plugins does not list {', '.join(missing)}")


def _declared_plugins() -> list[str]:
    import tomllib

    names = []
    for package in PACKAGES:
        meta = tomllib.loads((package / "pyproject.toml").read_text())
        names += list(meta.get("project", {}).get("entry-points", {}).get("mm.plugins", {}))
    return names
