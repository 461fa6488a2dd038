"""The language port: the detector contract, and the routing context's language step."""

from __future__ import annotations

import numpy as np
import pytest

from learner.embedding import HashingEmbedder
from learner.language import Cld2Detector, NoDetector, build_detector, direction, in_language, routing_context

PROMPTS = {
    "en": "How do I reverse a list in Python? Please show an example with slicing.",
    "fr": "Comment puis-je inverser une liste en Python ? Montre-moi un exemple avec le découpage.",
    "de": "Wie kehre ich eine Liste in Python um? Zeig mir bitte ein Beispiel mit Slicing.",
    "zh": "如何在Python中反转列表？请用切片举一个例子。",
    "ja": "Pythonでリストを逆順にするにはどうすればいいですか？スライスの例を見せてください。",
    "ru": "Как развернуть список в Python? Покажи пример со срезами, пожалуйста.",
}


@pytest.fixture(params=["cld2", "none"])
def detector(request):
    return build_detector(request.param)


def test_every_detector_answers_a_code_or_nothing(detector):
    for text in (*PROMPTS.values(), "", "   ", "12345", "\ud800 lone surrogate", "x" * 100_000):
        code = detector.detect(text)
        assert code == "" or (code.isalpha() and code.islower() and len(code) in (2, 3))


def test_cld2_tells_the_languages_of_short_prompts():
    d = Cld2Detector()
    assert {lang: d.detect(text) for lang, text in PROMPTS.items()} == {lang: lang for lang in PROMPTS}


def test_han_without_kana_is_chinese_not_japanese():
    # CLD2 alone takes this Chinese multiple-choice question for Japanese (no kana in it)
    assert Cld2Detector().detect("五谷中的菽是指什么 A. 大豆 B. 高粱 C. 玉米 D. 谷子 答案：") == "zh"


def test_no_detector_knows_no_language():
    assert NoDetector().detect(PROMPTS["fr"]) == ""


def test_an_unknown_detector_is_named():
    with pytest.raises(ValueError, match="unknown language detector 'fasttext'"):
        build_detector("fasttext")


def test_directions_are_fixed_unit_vectors_apart_per_language():
    a, b = direction("en", 256), direction("zh", 256)
    assert np.isclose(np.linalg.norm(a), 1.0) and np.isclose(np.linalg.norm(b), 1.0)
    assert abs(float(a @ b)) < 0.3
    assert np.array_equal(a, direction("en", 256))  # the same in every process: seeded by the code



def test_the_language_step_keeps_prompts_of_one_language_together():
    emb = HashingEmbedder(64)
    e = emb.embed(["sort a list", "sort a list fast"])
    x = [in_language(e[0], "en", 1.0), in_language(e[1], "en", 1.0), in_language(e[1], "zh", 1.0)]
    assert all(np.isclose(np.linalg.norm(v), 1.0, atol=1e-6) for v in x)
    assert x[0] @ x[1] > e[0] @ e[1] > x[0] @ x[2]


def test_weight_zero_or_no_language_leaves_the_embedding_as_it_is():
    e = HashingEmbedder(64).embed(["sort a list"])[0]
    assert in_language(e, "en", 0.0) is e
    assert in_language(e, "", 1.0) is e


def test_routing_context_is_the_language_the_embedding_and_the_step():
    emb = HashingEmbedder(64)
    lang, e, ctx = routing_context(PROMPTS["fr"], emb, Cld2Detector(), 0.5)
    assert lang == "fr"
    assert np.array_equal(e, emb.embed([PROMPTS["fr"]])[0])
    assert np.array_equal(ctx, in_language(e, "fr", 0.5))
