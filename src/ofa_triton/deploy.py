"""Switch an exported repository, and the server running it, to another version with no
downtime; and back.

The repository's configs say what serves (``triton_config.ServedVersions``): every step
loads the serving version, and the ensemble's steps name it, so that a deploy switches the
three steps at once instead of letting a new preprocessing feed an old graph. Deploy rewrites
those lines and, with ``url``, has the running server (explicit model control) load them:

1. check the new version's files against their manifests (nothing changes if one differs);
2. each step loads the new version beside the serving one. Triton reloads a model
   atomically: the new instances load and warm up while the old ones serve, and a failed
   reload leaves the loaded model unchanged. On a failure the configs are restored and the
   steps that loaded the new version drop it: the old version never stopped serving;
3. the ensemble switches to the new version: requests from then on run it end to end, the
   ones in flight finish on the old one;
4. each step unloads the old version.

The ensemble records ``previous_version``, which ``rollback`` deploys. Everything lives in the
repository's files, so a restarted server serves what was deployed last. Without ``url`` only
the files change, for the next start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .manifest import problems_in
from .server import admin_headers
from .triton_config import (ENSEMBLE_MODEL, ServedVersions, ensemble_steps,
                            read_served_versions, write_served_versions)


class DeployError(RuntimeError):
    """The switch did not happen; the message says what still serves and what to do."""


@dataclasses.dataclass(frozen=True)
class DeployResult:
    model: str
    version: int
    previous: int | None


class ModelControl:
    """A running server's model-repository API over HTTP, with the admin key when the server
    restricts it."""

    def __init__(self, url: str, admin_key: str | None = None, timeout: float = 600.0):
        import tritonclient.http as httpclient

        self._errors = httpclient.InferenceServerException
        self._client = httpclient.InferenceServerClient(
            url, connection_timeout=timeout, network_timeout=timeout)
        self._headers = admin_headers("http", admin_key) if admin_key else None

    def load(self, model: str) -> None:
        """(Re)load ``model`` from the repository's files."""
        try:
            self._client.load_model(model, headers=self._headers)
        except self._errors as error:
            raise DeployError(_explain(str(error))) from None

    def close(self) -> None:
        self._client.close()


def _explain(message: str) -> str:
    if "explicit model load / unload is not allowed" in message:
        return (f"{message}; start the server with --model-control explicit (ofa-triton serve "
                "--model-control explicit), or deploy without --url and restart it")
    if "admin-key" in message.lower() or "unauthorized" in message.lower():
        return f"{message}; pass the server's admin key (--admin-key-env VARIABLE)"
    return message


def _check_version_files(repository: Path, steps: list[str], version: int) -> None:
    problems = []
    for step in steps:
        directory = repository / step / str(version)
        if not directory.is_dir():
            problems.append(f"{directory}: missing (export it with --version {version})")
        else:
            problems += problems_in(directory)
    if problems:
        raise DeployError(f"version {version} cannot serve, so nothing was switched: "
                          + "; ".join(problems))


def deploy(repository: str | Path, version: int, *, model: str = ENSEMBLE_MODEL,
           url: str | None = None, admin_key: str | None = None,
           progress: Callable[[str], None] = print) -> DeployResult:
    """Serve ``version`` of ``model`` (an ensemble) and its steps."""
    repository = Path(repository)
    served = read_served_versions(repository, model)
    if served is None:
        raise FileNotFoundError(f"{repository / model / 'config.pbtxt'} does not exist; name the "
                                "ensemble with --model (an export's --name-prefix + "
                                f"{ENSEMBLE_MODEL})")
    current = served.serving
    if version == current:
        progress(f"{model} already serves version {version}")
        return DeployResult(model, version, served.previous)
    steps = ensemble_steps(repository, model)
    progress(f"[1/4] checking version {version} of {', '.join(steps)} against the manifests")
    _check_version_files(repository, steps, version)
    if url is None:
        write_served_versions(repository, model, ServedVersions(version, previous=current))
        progress(f"done: {repository} serves version {version} of {model} from its next start "
                 f"(previous: {current}); with --url a running server switches now")
        return DeployResult(model, version, current)

    control = ModelControl(url, admin_key)
    try:
        write_served_versions(repository, model,
                              ServedVersions(current, served.previous, loading=version))
        loaded = []
        for step in steps:
            progress(f"[2/4] loading version {version} of {step} beside version {current}")
            try:
                control.load(step)
            except DeployError as error:
                # Back to the files that served, and every step reloaded from them (the failed
                # one too, so that Triton's config of it matches the files again). Triton keeps
                # the failed version listed as UNAVAILABLE all the same, until it restarts.
                write_served_versions(repository, model, served)
                for done in loaded + [step]:
                    control.load(done)
                raise DeployError(
                    f"version {version} of {step} failed to load, so nothing was switched: "
                    f"{model} still serves version {current}. Triton said: {error}\n"
                    f"Triton keeps listing the failed version as UNAVAILABLE, so the server's "
                    f"strict readiness (/v2/health/ready) stays false until it restarts; "
                    f"/v2/models/{model}/ready stays true. Fix the checkpoint, export it "
                    f"again (a new version) and deploy that.") from None
            loaded.append(step)
        progress(f"[3/4] switching {model} to version {version}")
        write_served_versions(repository, model,
                              ServedVersions(version, previous=current, loading=current))
        control.load(model)
        progress(f"[4/4] unloading version {current} of {', '.join(steps)}")
        write_served_versions(repository, model, ServedVersions(version, previous=current))
        for step in steps:
            control.load(step)
    finally:
        control.close()
    progress(f"done: {model} serves version {version} (previous: {current})")
    return DeployResult(model, version, current)


def rollback(repository: str | Path, *, model: str = ENSEMBLE_MODEL, url: str | None = None,
             admin_key: str | None = None,
             progress: Callable[[str], None] = print) -> DeployResult:
    """Deploy the version that served before the last deploy."""
    served = read_served_versions(Path(repository), model)
    if served is None or served.previous is None:
        raise DeployError(f"{model} in {repository} records no previous version (nothing was "
                          "deployed over its first version); name one: ofa-triton deploy "
                          "--version N")
    return deploy(repository, served.previous, model=model, url=url, admin_key=admin_key,
                  progress=progress)
