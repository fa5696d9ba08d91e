"""Java runtime checks and crash handling for the JVM-backed environments (py4j bridge).

ScienceWorld and TextWorldExpress run their simulators in a Java process that py4j
starts with the ``java`` found on ``PATH``. :func:`require_java` fails early with an
actionable message instead of a py4j stack trace; :func:`jvm_call` turns a dead JVM into
:class:`~tcod.envs.base.EnvironmentCrashed`; :class:`JvmSimulator` is what both
environments share on top of that (the crash latch, the JVM's pid, closing).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from .base import EnvironmentCrashed

INSTALL_HINT = (
    "Install a Java runtime (11 or newer), e.g. `sudo apt-get install openjdk-17-jre-headless` "
    "(Debian/Ubuntu), `brew install openjdk@17` (macOS) or `conda install -c conda-forge openjdk=17`, "
    "then make sure `java` is on PATH or JAVA_HOME points to it."
)


class JavaNotFoundError(RuntimeError):
    """No Java runtime was found for a JVM-backed environment."""


def find_java() -> str | None:
    """Path of the ``java`` executable: from PATH, else from ``$JAVA_HOME/bin``."""
    found = shutil.which("java")
    if found:
        return found
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_java(env_name: str) -> str:
    """Return the java executable; raise :class:`JavaNotFoundError` when there is none.

    When java is only found through JAVA_HOME, its folder is put on PATH, because py4j
    launches plain ``java``.
    """
    java = find_java()
    if java is None:
        raise JavaNotFoundError(f"{env_name} needs a Java runtime, and none was found "
                                f"(no `java` on PATH, no usable JAVA_HOME). {INSTALL_HINT}")
    if shutil.which("java") is None:
        os.environ["PATH"] = os.path.dirname(java) + os.pathsep + os.environ.get("PATH", "")
    return java


def jvm_call(env_name: str, process, fn, *args):
    """Call ``fn(*args)`` on the JVM bridge; raise EnvironmentCrashed if the JVM is gone."""
    if process is not None and process.poll() is not None:
        raise EnvironmentCrashed(f"the {env_name} Java process has exited (code {process.returncode}); "
                                 f"close this environment and make a new one")
    try:
        return fn(*args)
    except Exception as exc:
        from py4j.protocol import Py4JError, Py4JJavaError, Py4JNetworkError

        if isinstance(exc, Py4JJavaError) or not isinstance(exc, (Py4JError, OSError)):
            raise                       # a Java-side exception or a bug: the JVM is alive
        if process is not None:         # a killed JVM may take a moment to be reaped
            try:
                process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        dead = process is not None and process.poll() is not None
        if isinstance(exc, (Py4JNetworkError, ConnectionError)) or dead:
            raise EnvironmentCrashed(f"the {env_name} Java process stopped answering "
                                     f"({type(exc).__name__}); close this environment and make "
                                     f"a new one") from exc
        raise


def shutdown_bridge(gateway, close_fn) -> None:
    """Close a py4j-backed simulator, whether its JVM is alive or already dead.

    ``close_fn`` is the simulator's own close (used while the JVM lives). py4j's logging
    is muted meanwhile: a dead JVM makes it log connection tracebacks that say nothing new.
    """
    import logging

    proc = gateway.java_process
    logger = logging.getLogger("py4j")
    level, logger.disabled = logger.disabled, True
    try:
        if proc.poll() is None:
            close_fn()
        else:
            gateway.shutdown()
    except Exception:  # a half-closed bridge: the kill below settles it
        pass
    finally:
        logger.disabled = level
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class JvmSimulator:
    """Mixin of the py4j-backed environments: calls through :func:`jvm_call`, a crash latch,
    the JVM's pid and closing. Subclasses set ``simulator_name`` and assign ``self._sim``."""

    simulator_name = ""
    _crashed = False

    @property
    def pid(self) -> int:
        """Process id of the simulator's JVM."""
        return self._sim._gateway.java_process.pid

    def _call(self, fn, *args):
        if self._crashed:
            raise EnvironmentCrashed(f"this {self.simulator_name} environment crashed earlier; make a new one")
        try:
            return jvm_call(self.simulator_name, self._sim._gateway.java_process, fn, *args)
        except EnvironmentCrashed:
            self._crashed = True
            raise

    def _close(self) -> None:
        shutdown_bridge(self._sim._gateway, self._sim.close)
        self._sim.close = lambda: None   # its __del__ would close a second time
