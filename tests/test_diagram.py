"""`incept summary --diagram`: an SVG drawn from the spec, checked against the built model."""

import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

import incept
import incept.spec.layers
from incept.diagram import write_diagram

SVG = "{http://www.w3.org/2000/svg}"


def boxes(root, kind):
    return [r for r in root.iter(f"{SVG}rect") if kind in r.get("class", "").split()]


def test_inception_v3_diagram(tmp_path):
    path = tmp_path / "v3.svg"
    write_diagram(path, "inception_v3", image_size=299)
    root = ElementTree.parse(path).getroot()
    texts = [t.text for t in root.iter(f"{SVG}text")]
    for name in ["Conv2d_1a_3x3", "Mixed_5b", "Mixed_6e", "AuxLogits", "Mixed_7c", "Logits"]:
        assert name in texts
    assert "256 x 35 x 35" in texts and "2048 x 8 x 8" in texts and "1000" in texts
    model = incept.nets.inception_v3()
    convs = sum(1 for m in model.modules() if isinstance(m, incept.spec.layers.ConvBN))
    # every conv is a box, except parallel pairs (1x3 | 3x1) which share one
    parallel_pairs = sum(1 for t in texts if t and " | " in t)
    assert len(boxes(root, "conv")) == convs - parallel_pairs
    assert parallel_pairs == 4  # Mixed_7b and 7c, two branches each
    assert len(boxes(root, "concat")) == 11  # the mixed blocks
    assert "conv 3x3 /2, 384" in texts  # Mixed_6a's reduction
    assert path.stat().st_mode & 0o044  # readable by others, like any file the user writes


def test_diagram_follows_width_and_the_aux_switch(tmp_path):
    path = tmp_path / "small.svg"
    write_diagram(path, "inception_v3", image_size=160, width=0.25, aux_logits=False)
    texts = [t.text for t in ElementTree.parse(path).getroot().iter(f"{SVG}text")]
    assert "AuxLogits" not in texts
    assert "512 x 3 x 3" in texts and "conv 3x3 /2, 96" in texts  # 384 * 0.25


def test_diagram_flag_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "incept", "summary", "--diagram", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "name the file *.svg" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", incept.nets.names())
def test_every_registered_model_is_drawn(tmp_path, name):
    path = tmp_path / f"{name}.svg"
    size = incept.nets.registry.entry(name).image_size
    write_diagram(path, name, image_size=size)
    texts = {t.text for t in ElementTree.parse(path).getroot().iter(f"{SVG}text")}
    model = incept.nets.create(name)
    body = [stage for stage, kind in model.stages if kind == "body"]
    assert set(body) <= texts  # every end point of the body has its row
    assert "Logits" in texts
