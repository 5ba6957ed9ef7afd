"""The paper-size BLAT architecture (random weights in the official checkpoint layout) exports with parity."""

from __future__ import annotations

import pytest
import torch

import blat
from blat.convert import import_blat_checkpoint
from blat_contract.vocab import Vocabulary
from blat_export.bundle import PARITY_ATOL, check_parity
from blat_export.graphs import export_graph

pytestmark = pytest.mark.bench  # paper-size graphs (a minute of export): `make test-bench`


@pytest.fixture(scope="module")
def paper_dual(tmp_path_factory):
    """A release-layout file (with the stray position_ids and the BERT pooler) imported the way users import BLAT."""
    torch.manual_seed(0)
    model = blat.create_model("blat-cnn14-bertm")
    sd = dict(model.state_dict())
    sd["text_encoder.model.embeddings.position_ids"] = torch.arange(512)[None]
    sd["text_encoder.model.pooler.dense.weight"] = torch.randn(512, 512)
    sd["text_encoder.model.pooler.dense.bias"] = torch.randn(512)
    path = tmp_path_factory.mktemp("release") / "blat_cnn14_bertm.pth"
    torch.save({"state_dict": sd, "epoch": 1, "iteration": 1, "monitor_best": 0.0, "config": {}}, path)
    return import_blat_checkpoint(path)


def test_paper_audio_encoder(paper_dual, tmp_path):
    path = export_graph("audio_encoder", paper_dual, tmp_path / "a.onnx")
    assert sum(p.numel() for p in paper_dual.audio_encoder.parameters()) == 79_673_792
    for batch, n in [(1, 32000 * 3), (3, 32000 * 5)]:
        wave = 0.1 * torch.randn(batch, n)
        lengths = torch.tensor([n, n // 2, n // 3][:batch])
        assert check_parity("audio_encoder", paper_dual, path, (wave, lengths)) <= PARITY_ATOL


def test_paper_text_encoder(paper_dual, tmp_path):
    path = export_graph("text_encoder", paper_dual, tmp_path / "t.onnx")
    for texts in (["a dog barks"], ["birds are chirping", "a man is speaking loudly while cars pass on a road"]):
        tok = paper_dual.text_encoder.tokenize(texts)
        assert check_parity("text_encoder", paper_dual, path, (tok["input_ids"], tok["attention_mask"])) <= PARITY_ATOL


def test_paper_captioner(tmp_path):
    torch.manual_seed(1)
    cap = blat.create_model(
        "blat-captioner", vocab=Vocabulary.build(["a dog barks", "rain falls", "a car passes"])
    ).eval()
    for graph in ("captioner_encoder", "captioner_decoder"):
        path = export_graph(graph, cap, tmp_path / f"{graph}.onnx")
        assert check_parity(graph, cap, path) <= PARITY_ATOL
