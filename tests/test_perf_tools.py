"""perf_analyzer for users (``ofa-triton perf-inputs`` and ``ofa-triton perf``, over
``ofa_triton.perf`` and ``perf_inputs``): the --input-data JSON from a user's own images and texts, the clear
errors, the argument pass-through, the libraries perf_analyzer needs, and one real run of the
bundled perf_analyzer through the CLI against a real tritonserver."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ofa_triton import cli, perf, perf_inputs
from ofa_triton.synthetic import photo_like
from ofa_triton.tasks import TASKS, task_named
from ofa_triton.triton_config import ServingOptions

OFA_TRITON = Path(sys.executable).parent / "ofa-triton"
ENTAILMENT = task_named("visual-entailment")


def write_images(folder: Path, count: int = 3, size=(160, 120)) -> list[Path]:
    """``count`` small photo-like JPEGs, and a PNG, in ``folder`` (with a file to ignore)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        paths.append(folder / f"photo{index}.jpg")
        Image.fromarray(photo_like(*size, seed=index)).save(paths[-1], "JPEG", quality=85)
    paths.append(folder / "drawing.PNG")
    Image.fromarray(photo_like(64, 48, seed=99)).save(paths[-1], "PNG")
    (folder / "notes.txt").write_text("not an image")
    return sorted(paths)


def decode_element(content: dict) -> bytes:
    """One BYTES element as perf_analyzer sends it: b64 of a 4-byte little-endian length,
    then the bytes."""
    raw = base64.b64decode(content["b64"])
    (length,) = struct.unpack_from("<I", raw)
    assert length == len(raw) - 4
    return raw[4:]


def read_inputs(path: Path) -> list[dict[str, bytes]]:
    document = json.loads(path.read_text())
    assert list(document) == ["data"]
    entries = []
    for entry in document["data"]:
        for value in entry.values():
            assert value["shape"] == [1] and list(value["content"]) == ["b64"]
        entries.append({name: decode_element(value["content"]) for name, value in entry.items()})
    return entries


# ---------------------------------------------------------------------------------------------
# The inputs JSON


def test_the_public_models_inputs_come_from_their_config_templates():
    inputs = {task.public_model: [(item.name, item.optional) for item in perf_inputs.model_inputs(task)]
              for task in TASKS.values()}
    assert inputs == {
        "ofa_visual_entailment": [("image", False), ("hypothesis", False), ("premise", True)],
        "ofa_image_caption": [("image", False)],
        "ofa_visual_question_answering": [("image", False), ("question", False)],
        "ofa_visual_grounding": [("image", False), ("text", False)]}
    # An export's --name-prefix is understood.
    assert perf_inputs.task_of_model("large_ofa_visual_grounding") is task_named("visual-grounding")
    with pytest.raises(perf_inputs.PerfInputsError, match="none of the public models"):
        perf_inputs.task_of_model("ofa_preprocess")


def test_users_images_and_texts(tmp_path):
    images = write_images(tmp_path / "images")
    texts = tmp_path / "texts.txt"
    texts.write_text("a dog runs on the grass\n\n  \nthe sky is blue\tan outdoor scene\n",
                     "utf-8")
    summary = perf_inputs.write_model_inputs(tmp_path / "inputs.json", ENTAILMENT,
                                      images=tmp_path / "images", texts=texts)
    assert summary.requests == 4 and summary.inputs == ("image", "hypothesis", "premise")
    entries = read_inputs(summary.path)
    assert [entry["image"] for entry in entries] == [path.read_bytes() for path in images]
    # Two text lines cycled over four images; a line without a premise sends an empty one.
    assert [(e["hypothesis"], e["premise"]) for e in entries] == [
        (b"a dog runs on the grass", b""), (b"the sky is blue", b"an outdoor scene")] * 2


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_generated_images_and_builtin_texts_for_every_task(tmp_path, task_name):
    task = task_named(task_name)
    summary = perf_inputs.write_model_inputs(tmp_path / "inputs.json", task, count=2)
    entries = read_inputs(summary.path)
    assert len(entries) == 2
    for entry in entries:
        assert list(entry) == [item.name for item in perf_inputs.model_inputs(task)]
        with Image.open(io.BytesIO(entry["image"])) as image:
            assert image.format == "JPEG" and image.size in ((640, 480), (1280, 960))
        for name, value in entry.items():
            if name not in ("image", "premise"):
                assert value.decode("utf-8").strip(), name   # never an empty required text
    assert entries[0]["image"] != entries[1]["image"]


def test_the_benchmarks_use_the_same_implementation(tmp_path):
    from benchmarks import inputs as bench_inputs
    from benchmarks import perf as bench_perf

    assert bench_inputs.build_requests is perf_inputs.build_requests
    assert bench_inputs.write_perf_analyzer_inputs is perf_inputs.write_perf_analyzer_inputs
    assert bench_perf.perf_analyzer_binary is perf.perf_analyzer_binary
    assert bench_perf.VENDORED is perf.VENDORED
    requests = perf_inputs.build_requests(count=2)
    assert set(requests[0]) == {"image", "hypothesis", "premise", "question", "text"}
    path = perf_inputs.write_perf_analyzer_inputs(requests, tmp_path / "bench.json")
    entries = read_inputs(path)
    assert list(entries[0]) == ["image", "hypothesis", "premise"]
    assert entries[0]["hypothesis"] == requests[0]["hypothesis"].encode()


def test_clear_errors(tmp_path):
    images = tmp_path / "images"
    write_images(images, count=1)
    write = lambda **kwargs: perf_inputs.write_model_inputs(tmp_path / "out.json",  # noqa: E731
                                                     kwargs.pop("task", ENTAILMENT), **kwargs)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(perf_inputs.PerfInputsError, match="no images in that folder"):
        write(images=tmp_path / "empty")
    with pytest.raises(perf_inputs.PerfInputsError, match="no such folder"):
        write(images=tmp_path / "missing")

    broken = tmp_path / "broken"
    write_images(broken, count=1)
    (broken / "photo0.jpg").write_bytes((broken / "photo0.jpg").read_bytes()[:600])  # truncated
    with pytest.raises(perf_inputs.PerfInputsError, match="photo0.jpg would be refused by the server"):
        write(images=broken)
    (broken / "photo0.jpg").write_bytes(b"%PDF-1.4 not a photo")
    with pytest.raises(perf_inputs.PerfInputsError, match="photo0.jpg .*it is a PDF document"):
        write(images=broken)

    texts = tmp_path / "texts.txt"
    texts.write_bytes(b"caf\xe9\n")
    with pytest.raises(perf_inputs.PerfInputsError, match="not UTF-8"):
        write(images=images, texts=texts)
    texts.write_text("\n   \n")
    with pytest.raises(perf_inputs.PerfInputsError, match="no texts in it"):
        write(images=images, texts=texts)
    texts.write_text("ok\n\tonly a premise\n")
    with pytest.raises(perf_inputs.PerfInputsError, match="line 2: the hypothesis is empty"):
        write(images=images, texts=texts)
    texts.write_text("what is it?\tmore\n")
    with pytest.raises(perf_inputs.PerfInputsError, match="line 1: 2 tab-separated texts, but "
                       "ofa_visual_question_answering takes 1 per line \\(question\\)"):
        write(images=images, texts=texts, task=task_named("visual-question-answering"))
    texts.write_text("x" * 5000 + "\n")
    with pytest.raises(perf_inputs.PerfInputsError, match="5,000 characters"):
        write(images=images, texts=texts)
    texts.write_text("a caption needs no text\n")
    with pytest.raises(perf_inputs.PerfInputsError, match="takes no text"):
        write(images=images, texts=texts, task=task_named("image-captioning"))
    with pytest.raises(perf_inputs.PerfInputsError, match="--count"):
        write(count=0)


def test_perf_inputs_command(tmp_path, capsys):
    write_images(tmp_path / "images", count=2)
    output = tmp_path / "vqa.json"
    assert cli.main(["perf-inputs", "--images", str(tmp_path / "images"), "--task",
                     "visual-question-answering", "--output", str(output)]) == 0
    assert "wrote 3 request(s) for ofa_visual_question_answering" in capsys.readouterr().out
    assert [entry["question"] for entry in read_inputs(output)] == [
        text.encode() for text in perf_inputs.QUESTIONS[:3]]
    # Errors are one line and exit code 2.
    assert cli.main(["perf-inputs", "--images", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == (f"ofa-triton perf-inputs: error: --images "
                                               f"{tmp_path / 'nowhere'}: no such folder")
    assert cli.main(["perf-inputs", "--model", "ofa_caption_generator"]) == 2
    assert "none of the public models" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# ofa-triton perf: the arguments and the environment perf_analyzer gets


@pytest.fixture
def fake_perf_analyzer(monkeypatch):
    """Record what ``ofa-triton perf`` would run, instead of running it; exit code 3."""
    calls = []

    def run(argv, env):
        inputs = argv[argv.index("--input-data") + 1]
        library_dir = env["LD_LIBRARY_PATH"].split(os.pathsep)[0]
        calls.append({
            "argv": argv, "env": env,
            "inputs": read_inputs(Path(inputs)) if Path(inputs).is_file() else inputs,
            "libraries": {name: (Path(library_dir) / name).resolve().is_file()
                          for name in perf.VENDORED}})
        return subprocess.CompletedProcess(argv, 3)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_perf_defaults_and_generated_inputs(fake_perf_analyzer):
    assert cli.main(["perf", "--concurrency-range", "1:4", "-p", "2000"]) == 3
    (call,) = fake_perf_analyzer
    argv = call["argv"]
    assert argv[0] == str(perf.perf_analyzer_binary())
    assert argv[1:7] == ["-m", "ofa_visual_entailment", "-u", "localhost:8001", "-i", "grpc"]
    assert argv[9:] == ["--concurrency-range", "1:4", "-p", "2000"]
    assert len(call["inputs"]) == perf_inputs.DEFAULT_COUNT
    assert list(call["inputs"][0]) == ["image", "hypothesis", "premise"]
    assert call["libraries"] == {"libb64.so.0d": True, "libcudart.so.12": True}


def test_perf_passes_the_users_arguments_through(fake_perf_analyzer, tmp_path):
    inputs = tmp_path / "mine.json"
    inputs.write_text('{"data": []}')
    assert cli.main(["perf", "-m", "large_ofa_image_caption", "--concurrency-range", "1:4",
                     "-u", "triton:8000", "--input-data", str(inputs), "-f", "out.csv",
                     "--input-tensor-format", "json", "-v"]) == 3
    argv = fake_perf_analyzer[-1]["argv"][1:]
    assert argv == ["-m", "large_ofa_image_caption", "-u", "triton:8000", "--input-data",
                    str(inputs), "--concurrency-range", "1:4", "-f", "out.csv",
                    "--input-tensor-format", "json", "-v"]
    # -mNAME, --input-data=FILE; a model whose inputs it cannot write needs --input-data.
    assert cli.main(["perf", "-mofa_visual_grounding", "-i", "http"]) == 3
    call = fake_perf_analyzer[-1]
    assert call["argv"][1:5] == ["-m", "ofa_visual_grounding", "-i", "http"]
    assert list(call["inputs"][0]) == ["image", "text"]
    assert cli.main(["perf", "-m", "ofa_preprocess"]) == 2
    assert len(fake_perf_analyzer) == 2
    # Other commands still refuse unknown arguments.
    with pytest.raises(SystemExit):
        cli.main(["verify", "--repository", str(tmp_path), "--concurrency-range", "1:4"])


def test_perf_explains_a_perf_analyzer_that_cannot_start(monkeypatch, capsys, tmp_path):
    inputs = tmp_path / "mine.json"
    inputs.write_text('{"data": []}')
    monkeypatch.setattr(subprocess, "run", lambda argv, env: subprocess.CompletedProcess(argv, 127))
    assert cli.main(["perf", "--input-data", str(inputs)]) == 127
    assert "perf_analyzer could not start" in capsys.readouterr().err


def test_library_path_is_built_in_one_place(tmp_path):
    from ofa_triton.server import library_path

    assert library_path(None, "/a", Path("/b"), environ={"LD_LIBRARY_PATH": "/c"}) == "/a:/b:/c"
    assert library_path("/a", environ={}) == "/a"
    env = perf.perf_analyzer_environment(tmp_path, environ={"LD_LIBRARY_PATH": "/keep"})
    assert env["LD_LIBRARY_PATH"] == f"{tmp_path / perf.LIBRARY_FOLDER}{os.pathsep}/keep"
    # The symlinks are made again when they point elsewhere (another, deleted environment).
    link = tmp_path / perf.LIBRARY_FOLDER / "libb64.so.0d"
    link.unlink()
    link.symlink_to(tmp_path / "gone.so")
    perf.perf_analyzer_environment(tmp_path)
    assert link.resolve().is_file()


def test_the_bundled_perf_analyzer_starts_only_with_its_libraries(tmp_path):
    """The user's report: run bare, perf_analyzer cannot load libb64.so.0d."""
    binary = str(perf.perf_analyzer_binary())
    bare = {key: value for key, value in os.environ.items() if key != "LD_LIBRARY_PATH"}
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, env=bare)
    assert result.returncode != 0 and "libb64.so.0d" in result.stderr
    result = subprocess.run([binary, "--version"], capture_output=True, text=True,
                            env=perf.perf_analyzer_environment(tmp_path, environ=bare))
    assert result.returncode == 0, result.stderr


def test_export_takes_its_serving_defaults_from_serving_options():
    args = cli.build_parser().parse_args(["export", "--model", "m", "--repository", "r"])
    for field in dataclasses.fields(ServingOptions):
        assert getattr(args, field.name) == field.default, field.name


# ---------------------------------------------------------------------------------------------
# The real thing


def test_perf_against_a_real_server(triton_server, tmp_path):
    """A platform team's run: their own photos, then the bundled perf_analyzer through the CLI,
    from a shell without LD_LIBRARY_PATH."""
    write_images(tmp_path / "photos", count=3, size=(320, 240))
    env = {key: value for key, value in os.environ.items() if key != "LD_LIBRARY_PATH"}
    inputs = tmp_path / "inputs.json"
    written = subprocess.run([str(OFA_TRITON), "perf-inputs", "--images", str(tmp_path / "photos"),
                              "--output", str(inputs)], capture_output=True, text=True, env=env,
                             timeout=120)
    assert written.returncode == 0, written.stderr
    assert "wrote 4 request(s) for ofa_visual_entailment" in written.stdout
    # A loose stability threshold: the test machine's 2 cores are shared with other tests.
    result = subprocess.run(
        [str(OFA_TRITON), "perf", "-m", "ofa_visual_entailment", "-u", triton_server.grpc_url,
         "-i", "grpc", "--concurrency-range", "1:1", "--measurement-interval", "1000",
         "--stability-percentage", "100", "--input-data", str(inputs)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Throughput:" in result.stdout and "Inferences/Second" in result.stdout
    assert "Concurrency: 1, throughput:" in result.stdout
    assert "Successfully read data for 1 stream/streams with 4 step/steps" in result.stdout
