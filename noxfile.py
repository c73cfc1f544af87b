"""nox sessions: tests, lint (ruff), types (mypy --strict), bench."""

import nox

nox.options.sessions = ["tests", "lint", "types"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (interop tests skip when a peer is missing)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and import order."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks")


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[lint]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks, side by side with pynetdicom and dcmtk (needs dcmtk).

    ``nox -s bench -- --quick`` runs echo and store; ``nox -s bench -- store
    --quick`` runs one (echo, store, qr, nservice, many: many associations at
    once into one SCP, or instructions: the work per store counted with
    valgrind and strace) with its own options.
    """
    session.install("-e", ".[bench]")
    scripts = ["echo", "store"]
    args = list(session.posargs)
    if args and args[0] in (*scripts, "qr", "nservice", "many", "instructions"):
        scripts, args = [args[0]], args[1:]
    for name in scripts:
        session.run("python", f"benchmarks/bench_{name}.py", *args)
