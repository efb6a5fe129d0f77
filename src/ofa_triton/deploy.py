"""Switch an exported repository, and the server running it, to another version with no
downtime; and back.

The repository's configs say what serves (``triton_config.ServedVersions``): every step
loads the serving version, and the ensemble's steps name it, so that a deploy switches the
three steps at once instead of letting a new preprocessing feed an old graph. Deploy rewrites
those lines and, with ``url``, has the running server (explicit model control) load them:

1. check the new version's files against their manifests (nothing changes if one differs);
2. pre-flight (``run_preflight``): load the new version, and only it, in a throwaway tritonserver
   on loopback ports, from a scratch repository of the same configs (serving only the new
   version) and symlinks to the same version directories; each step's ``initialize()`` runs
   the manifest check and the warmup sample, then the sample goes through the ensemble. A
   version that fails there never reaches the live server, whose model index (and so its
   strict readiness) it would otherwise spoil: Triton lists a version that failed to load as
   UNAVAILABLE until a restart;
3. each step loads the new version beside the serving one. Triton reloads a model
   atomically: the new instances load and warm up while the old ones serve, and a failed
   reload leaves the loaded model unchanged. On a failure the configs are restored and the
   steps that loaded the new version drop it: the old version never stopped serving;
4. the ensemble switches to the new version: requests from then on run it end to end, the
   ones in flight finish on the old one;
5. each step unloads the old version; the deploy returns once its instances have exited.
   While step 3 loads and step 5 unloads, Triton lists those versions LOADING or UNLOADING,
   and its strict readiness (``/v2/health/ready``) is false even for a good version.

The ensemble records ``previous_version``, which ``rollback`` deploys. Everything lives in the
repository's files, so a restarted server serves what was deployed last. Without ``url`` only
the files change, for the next start (after the pre-flight, unless ``preflight=False``).

The pre-flight runs in this process's environment (its tritonserver, Python packages and
GPUs), which is the live server's when both run from the same environment (``ofa-triton
serve``); where they differ (the live server in a container, the deploy on the host) a version
can pass one and fail the other, and ``preflight=False`` (``--no-preflight``) skips it.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .manifest import problems_in
from .server import ServerOptions, TritonNotFoundError, TritonServer, admin_headers
from .triton_config import (ENSEMBLE_MODEL, ServedVersions, ensemble_steps,
                            read_served_versions, write_served_versions)

# How long the throwaway server may take to load and warm up the new version (a large
# checkpoint on a GPU with CUDA graphs takes minutes; the tiny test one about 4 s, plus about
# 4 s to stop the server).
PREFLIGHT_TIMEOUT = 900.0
# How long a deploy waits for the old version's instances to finish unloading.
SETTLE_TIMEOUT = 120.0


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

    def unsettled(self, models: list[str]) -> list[str]:
        """The versions of ``models`` still loading or unloading (Triton's strict readiness
        is false until they are done)."""
        try:
            index = self._client.get_model_repository_index(headers=self._headers)
        except self._errors as error:
            raise DeployError(_explain(str(error))) from None
        return [f"version {entry['version']} of {entry['name']} {entry['state'].lower()}"
                for entry in index if entry["name"] in models
                and entry.get("state") in ("LOADING", "UNLOADING")]

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


# Triton 2.51 logs a failed load as: E... model_lifecycle.cc:...] "failed to load 'NAME'
# version N: KIND: MESSAGE" (the message's newlines escaped).
_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version (\d+): (.*?)\"?$")


def _scratch_repository(repository: Path, model: str, steps: list[str], version: int,
                        scratch: Path) -> Path:
    """A repository in ``scratch`` that serves ``version`` only: a copy of each model's
    config.pbtxt, and a symlink to the version directory (the same files the live server
    would load)."""
    target = scratch / "repository"
    for name in [model, *steps]:
        (target / name).mkdir(parents=True)
        shutil.copyfile(repository / name / "config.pbtxt", target / name / "config.pbtxt")
        source = (repository / name / str(version)).resolve()
        if source.is_dir():
            (target / name / str(version)).symlink_to(source, target_is_directory=True)
        else:   # an ensemble has no files of its own; Triton wants a version directory
            (target / name / str(version)).mkdir()
    write_served_versions(target, model, ServedVersions(version))
    return target


def _load_failures(log: str) -> list[tuple[str, str]]:
    """[(model, Triton's reason)] for each failed load in a tritonserver log."""
    failures = []
    for line in log.splitlines():
        match = _LOAD_FAILURE.search(line)
        if match:
            reason = match.group(3).split("\\n\\nAt:")[0]   # not the Python traceback
            reason = " ".join(reason.replace("\\n", " ").replace('\\"', '"').split())
            failures.append((match.group(1), reason))
    return failures


def _sample_through_ensemble(url: str, model: str, version: int, scratch_repository: Path
                             ) -> str | None:
    """Send the first step's warmup sample (a real request, e.g. an image and its text)
    through the ensemble; returns None if it answered, else why not."""
    import numpy as np
    import tritonclient.http as httpclient

    from .warmup import read_warmup_sample

    client = httpclient.InferenceServerClient(url, network_timeout=600.0)
    try:
        ensemble = client.get_model_config(model, str(version))
        kinds = {t["name"]: t["data_type"].removeprefix("TYPE_").replace("STRING", "BYTES")
                 for t in ensemble["input"]}
        inputs = {}
        for step in ensemble["ensemble_scheduling"]["step"]:
            mapped = {key: value for key, value in step["input_map"].items() if value in kinds}
            if not mapped:
                continue
            config = client.get_model_config(step["model_name"], str(version))
            version_dir = scratch_repository / step["model_name"] / str(version)
            sample = read_warmup_sample(config, version_dir)
            inputs.update({mapped[key]: array for key, array in sample.items() if key in mapped})
        requests = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), kinds[name])
            tensor.set_data_from_numpy(array.astype(np.object_) if kinds[name] == "BYTES"
                                       else array)
            requests.append(tensor)
        result = client.infer(model, requests, model_version=str(version))
        missing = [t["name"] for t in ensemble["output"] if result.as_numpy(t["name"]) is None]
        return f"its answer lacks {', '.join(missing)}" if missing else None
    except Exception as error:   # the reason goes into the DeployError
        return f"{type(error).__name__}: {error}"
    finally:
        client.close()


def run_preflight(repository: str | Path, version: int, *, model: str = ENSEMBLE_MODEL,
              timeout: float = PREFLIGHT_TIMEOUT,
              progress: Callable[[str], None] = print) -> float:
    """Load ``version`` of ``model`` and its steps in a throwaway tritonserver (loopback
    ports, the same configs serving that version only, the same version directories), wait
    until each step is ready (each ``initialize()`` checks the manifest and runs the warmup
    sample), then send the sample through the ensemble. Returns the seconds it took; raises
    DeployError naming the step that failed and Triton's reason."""
    repository = Path(repository)
    steps = ensemble_steps(repository, model)
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="ofa-triton-preflight-"))
    failed = True
    try:
        scratch_repository = _scratch_repository(repository, model, steps, version, scratch)
        log_path = scratch / "tritonserver.log"
        try:
            server = TritonServer(ServerOptions.loopback(scratch_repository),
                                  log_path=log_path)
            server.start()
        except TritonNotFoundError as error:
            raise DeployError(f"{error}; or deploy with --no-preflight (preflight=False) to "
                              "skip the pre-flight") from None
        try:
            progress(f"      pre-flight: a throwaway tritonserver (127.0.0.1:"
                     f"{server.options.http_port}) loads version {version} of "
                     f"{', '.join(steps)} and warms each up")
            reason = None
            while True:
                if server.process.poll() is not None:
                    reason = f"the throwaway server exited with code {server.process.returncode}"
                    break
                if server.is_ready():
                    break
                if time.monotonic() - started > timeout:
                    reason = f"not ready after {timeout:.0f} s"
                    break
                time.sleep(0.25)
            if reason is None:
                progress(f"      pre-flight: loaded in {time.monotonic() - started:.1f} s; "
                         f"sending the warmup sample through {model}")
                answer = _sample_through_ensemble(server.http_url, model, version,
                                                  scratch_repository)
                failed = answer is not None
                reason = f"{model} did not answer the warmup sample: {answer}"
        finally:
            server.__exit__(None, None, None)   # stops it, its stubs too
        if not failed:
            return time.monotonic() - started
        failures = _load_failures(server.log())
        if failures:
            failing = ", ".join(dict.fromkeys(name for name, _ in failures))
            said = "; ".join(f"{name}: {why}" for name, why in failures)
            raise DeployError(f"pre-flight: version {version} of {failing} failed to load "
                              f"(in a throwaway tritonserver). Triton said: {said} (its log: "
                              f"{log_path})")
        tail = "\n".join(server.log().splitlines()[-20:])
        raise DeployError(f"pre-flight: version {version} of {model} failed: {reason} (its "
                          f"log: {log_path}; the end of it:\n{tail})")
    finally:
        if not failed:
            shutil.rmtree(scratch, ignore_errors=True)
        else:   # keep the throwaway server's log, which the error names; not the symlinks
            shutil.rmtree(scratch / "repository", ignore_errors=True)


def deploy(repository: str | Path, version: int, *, model: str = ENSEMBLE_MODEL,
           url: str | None = None, admin_key: str | None = None, preflight: bool = True,
           progress: Callable[[str], None] = print) -> DeployResult:
    """Serve ``version`` of ``model`` (an ensemble) and its steps; first, unless
    ``preflight=False``, load and warm it up in a throwaway server (``run_preflight``)."""
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
    progress(f"[1/5] checking version {version} of {', '.join(steps)} against the manifests")
    _check_version_files(repository, steps, version)
    if url is not None:   # a wrong URL or admin key fails now, not after the pre-flight
        probe = ModelControl(url, admin_key)
        try:
            probe.unsettled(steps)
        finally:
            probe.close()
    if preflight:
        progress(f"[2/5] pre-flight: loading version {version} in a throwaway tritonserver "
                 "(nothing live changes)")
        try:
            seconds = run_preflight(repository, version, model=model, progress=progress)
        except DeployError as error:
            raise DeployError(f"{error}\nNothing was switched: {model} still serves version "
                              f"{current}, and the live server never saw version {version}. "
                              f"Fix the checkpoint, export it again (a new version) and "
                              f"deploy that. (If only this environment cannot load it, e.g. "
                              f"no GPU or other packages than the live server's, deploy with "
                              f"--no-preflight.)") from None
        progress(f"      pre-flight passed in {seconds:.1f} s")
    else:
        progress("[2/5] pre-flight skipped (--no-preflight)")
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
            progress(f"[3/5] loading version {version} of {step} beside version {current}")
            try:
                control.load(step)
            except DeployError as error:
                # Back to the files that served, and every step reloaded from them (the failed
                # one too, so that Triton's config of it matches the files again). Triton keeps
                # the failed version listed as UNAVAILABLE all the same, until it restarts.
                write_served_versions(repository, model, served)
                for done in loaded + [step]:
                    control.load(done)
                checked = ("it passed the pre-flight, so the live server differs from this "
                           "environment (its packages, GPUs, or environment variables) or its "
                           "files changed since" if preflight else "the pre-flight was skipped")
                raise DeployError(
                    f"version {version} of {step} failed to load on the live server, so "
                    f"nothing was switched: {model} still serves version {current}. Triton "
                    f"said: {error}\n({checked}.) Triton keeps listing the failed version as "
                    f"UNAVAILABLE, so the server's strict readiness (/v2/health/ready) stays "
                    f"false until it restarts; /v2/models/{model}/ready stays true. Fix the "
                    f"checkpoint, export it again (a new version) and deploy that.") from None
            loaded.append(step)
        progress(f"[4/5] switching {model} to version {version}")
        write_served_versions(repository, model,
                              ServedVersions(version, previous=current, loading=current))
        control.load(model)
        progress(f"[5/5] unloading version {current} of {', '.join(steps)}")
        write_served_versions(repository, model, ServedVersions(version, previous=current))
        for step in steps:
            control.load(step)
        # The old instances finish their requests and exit after load() returns; until then
        # Triton lists them UNLOADING and its strict readiness stays false.
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (busy := control.unsettled(steps)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if busy:
            progress(f"      after {SETTLE_TIMEOUT:.0f} s still {', '.join(busy)}: the server's "
                     "strict readiness stays false until that ends")
    finally:
        control.close()
    progress(f"done: {model} serves version {version} (previous: {current})")
    return DeployResult(model, version, current)


def rollback(repository: str | Path, *, model: str = ENSEMBLE_MODEL, url: str | None = None,
             admin_key: str | None = None, preflight: bool = True,
             progress: Callable[[str], None] = print) -> DeployResult:
    """Deploy the version that served before the last deploy."""
    served = read_served_versions(Path(repository), model)
    if served is None or served.previous is None:
        raise DeployError(f"{model} in {repository} records no previous version (nothing was "
                          "deployed over its first version); name one: ofa-triton deploy "
                          "--version N")
    return deploy(repository, served.previous, model=model, url=url, admin_key=admin_key,
                  preflight=preflight, progress=progress)
