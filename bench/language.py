"""Language detectors compared on short prompts: accuracy and time per prompt, to choose one.

    python -m bench.language [--data DIR] [--per-file 500]
    python -m bench.language --replay [--weights 0,0.5,1] [--seeds 1,2,3] [--workers 2]
    python -m bench.language --separation [--weights 0,0.5,1]

Candidates (each measured only if its package is installed; all ship their model in the wheel):
py3langid (langid.py's model, numpy), lingua-language-detector (Rust; low- and high-accuracy
modes), pycld2 (Chromium's CLD2, C++), and Turnout's ``learner.language.Cld2Detector`` as it ships
(pycld2 with its two corrections). fasttext-langdetect is not a candidate: its wheel holds no
model, it downloads one at first use.

Prompts: the first ``--per-file`` prompts of each ``multilingual7/`` outcome file (cmmlu is
Chinese, arc_easy and gsm8k English) and the hand-written chat prompts below (14 languages, one
to a dozen words: the hard case). Accuracy is the share whose ISO 639-1 code is right; time is
per prompt, one prompt per call as the service detects, after a warm-up (p50 / p99 / max, and
the time to load the model).

``--replay``: does the language step help routing? The three ``multilingual7`` files as one
stream, replayed as ``bench.replay --tables`` does (the router as it ships, one shuffled pass per
seed, bandit feedback, a learning cycle every 10 prompts) with ``[language] weight`` at each of
``--weights`` (0: no language step), and the share of the quality gap between the best single
model and the oracle captured, overall and per language (the language of the file: cmmlu is
Chinese, the rest English), mean over the seeds.

``--separation``: how far apart the languages already are. 1,500 prompts drawn from the three
``multilingual7`` files, their routing contexts at each weight: mean cosine within Chinese, within
English and between the two, and, for k-means with k = 4 and 8 (the learner's ``kmeans``, 4
starts), how many prompts sit in a cluster whose majority is the other language.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path
from typing import Callable

import numpy as np

from bench.loadgen import percentiles
from simulations.outcomes import load_outcomes

ROOT = Path(__file__).resolve().parents[1]

# short chat prompts as users type them, by language (ISO 639-1)
HAND: dict[str, tuple[str, ...]] = {
    "en": ("What is the capital of Australia?", "Write a haiku about autumn rain.", "fix this bug please",
           "Summarise the following email in two sentences.", "How do I reverse a list in Python?",
           "thanks, that works"),
    "fr": ("Quelle est la capitale de l'Australie ?", "Écris un haïku sur la pluie d'automne.",
           "Peux-tu corriger ce bug ?", "Résume cet e-mail en deux phrases.", "Comment inverser une liste en Python ?",
           "merci, ça marche"),
    "de": ("Was ist die Hauptstadt von Australien?", "Schreib ein Haiku über Herbstregen.",
           "Kannst du diesen Fehler beheben?", "Fasse diese E-Mail in zwei Sätzen zusammen.",
           "Wie kehre ich eine Liste in Python um?", "danke, das funktioniert"),
    "es": ("¿Cuál es la capital de Australia?", "Escribe un haiku sobre la lluvia de otoño.",
           "¿Puedes arreglar este error?", "Resume este correo en dos frases.",
           "¿Cómo invierto una lista en Python?", "gracias, ya funciona"),
    "it": ("Qual è la capitale dell'Australia?", "Scrivi un haiku sulla pioggia d'autunno.",
           "Puoi correggere questo errore?", "Riassumi questa email in due frasi.",
           "Come inverto una lista in Python?", "grazie, funziona"),
    "pt": ("Qual é a capital da Austrália?", "Escreva um haicai sobre a chuva de outono.",
           "Você pode corrigir este erro?", "Resuma este e-mail em duas frases.",
           "Como inverto uma lista em Python?", "obrigado, funcionou"),
    "nl": ("Wat is de hoofdstad van Australië?", "Schrijf een haiku over herfstregen.",
           "Kun je deze fout oplossen?", "Vat deze e-mail samen in twee zinnen.",
           "Hoe draai ik een lijst om in Python?", "bedankt, het werkt"),
    "ru": ("Какая столица Австралии?", "Напиши хайку об осеннем дожде.", "Можешь исправить эту ошибку?",
           "Кратко перескажи это письмо в двух предложениях.", "Как развернуть список в Python?",
           "спасибо, работает"),
    "pl": ("Jaka jest stolica Australii?", "Napisz haiku o jesiennym deszczu.", "Czy możesz naprawić ten błąd?",
           "Streść tego maila w dwóch zdaniach.", "Jak odwrócić listę w Pythonie?", "dzięki, działa"),
    "tr": ("Avustralya'nın başkenti neresidir?", "Sonbahar yağmuru hakkında bir haiku yaz.",
           "Bu hatayı düzeltebilir misin?", "Bu e-postayı iki cümleyle özetle.",
           "Python'da bir listeyi nasıl ters çeviririm?", "teşekkürler, çalışıyor"),
    "zh": ("澳大利亚的首都是哪里？", "写一首关于秋雨的俳句。", "你能修复这个错误吗？", "用两句话总结这封邮件。",
           "如何在Python中反转列表？", "谢谢，可以了"),
    "ja": ("オーストラリアの首都はどこですか？", "秋の雨について俳句を書いて。", "このバグを直してくれますか？",
           "このメールを二文で要約してください。", "Pythonでリストを逆順にするには？", "ありがとう、動きました"),
    "ko": ("호주의 수도는 어디인가요?", "가을비에 대한 하이쿠를 써 줘.", "이 버그를 고쳐 줄 수 있어?",
           "이 이메일을 두 문장으로 요약해 줘.", "파이썬에서 리스트를 뒤집는 방법은?", "고마워, 잘 돼"),
    "ar": ("ما هي عاصمة أستراليا؟", "اكتب قصيدة هايكو عن مطر الخريف.", "هل يمكنك إصلاح هذا الخطأ؟",
           "لخص هذا البريد الإلكتروني في جملتين.", "كيف أعكس قائمة في بايثون؟", "شكرا، إنه يعمل"),
}
_FILE_LANGUAGE = {"cmmlu": "zh", "arc_easy": "en", "gsm8k": "en"}


def _py3langid() -> Callable[[str], str]:
    import py3langid

    return lambda text: py3langid.classify(text)[0]


def _lingua(high: bool) -> Callable[[], Callable[[str], str]]:
    def load() -> Callable[[str], str]:
        from lingua import LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_all_languages()
        det = (builder if high else builder.with_low_accuracy_mode()).build()

        def detect(text: str) -> str:
            lang = det.detect_language_of(text)
            return "" if lang is None else lang.iso_code_639_1.name.lower()

        return detect

    return load


def _pycld2() -> Callable[[str], str]:
    import pycld2

    def detect(text: str) -> str:
        code = pycld2.detect(text)[2][0][1]
        return "" if code == "un" else code.split("-")[0]

    return detect


def _turnout() -> Callable[[str], str]:
    from learner.language import Cld2Detector

    return Cld2Detector().detect


CANDIDATES: dict[str, Callable[[], Callable[[str], str]]] = {
    "py3langid": _py3langid, "lingua (low accuracy)": _lingua(False), "lingua (high accuracy)": _lingua(True),
    "pycld2": _pycld2, "Turnout's Cld2Detector (pycld2, kana check, best effort)": _turnout,
}  # fmt: skip


def prompt_sets(data: Path, per_file: int) -> dict[str, list[tuple[str, str]]]:
    """Named sets of (prompt, language)."""
    sets = {}
    for path in sorted(glob.glob(str(data / "multilingual7" / "*.jsonl"))):
        stem = Path(path).stem.removesuffix("_train")
        prompts = load_outcomes([path]).prompts[:per_file]
        sets[f"multilingual7/{stem} ({_FILE_LANGUAGE.get(stem, '?')})"] = [(p, _FILE_LANGUAGE.get(stem, "")) for p in prompts]
    sets[f"hand-written, {len(HAND)} languages"] = [(p, lang) for lang, ps in HAND.items() for p in ps]
    return sets


def measure(load: Callable[[], Callable[[str], str]], sets: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    t0 = time.perf_counter()
    try:
        detect = load()
        detect("warm up")
    except ImportError:
        return {}
    out = {"load_s": time.perf_counter() - t0}
    times = []
    for name, items in sets.items():
        for p, _ in items[:50]:
            detect(p)
        right = 0
        for p, lang in items:
            t = time.perf_counter()
            got = detect(p)
            times.append(time.perf_counter() - t)
            right += got == lang
        out[name] = right / len(items)
    out.update(percentiles(times))
    return out


def _replay_cell(job: tuple) -> tuple[float, int, dict[str, float]]:
    weight, seed, files, learn_every = job
    import msgspec

    from bench.replay import _deployment
    from learner.language import build_detector
    from learner.wordllama import WordLlamaEmbedder
    from simulations.experiment import embed_outcomes
    from simulations.replay import ReplayConfig, replay
    from simulations.report import evaluate

    dep = msgspec.structs.replace(_deployment(None), language_detector="cld2", language_weight=weight)
    outcomes = load_outcomes(list(files))
    emb = embed_outcomes(outcomes, WordLlamaEmbedder(256), build_detector("cld2"), weight)
    run = replay(outcomes, emb, dep, ReplayConfig(seed=seed, learn_every=learn_every, cost_weight=0.0))
    langs = np.array([_FILE_LANGUAGE.get(t, "?") for t in outcomes.tasks])
    out = {"all": evaluate(outcomes, [(0.0, run)]).gap_share}
    for lang in sorted(set(langs)):
        keep = langs[run.rows] == lang
        sub = outcomes.take(np.flatnonzero(langs == lang))
        part = msgspec.structs.replace(run, rows=np.zeros(int(keep.sum()), dtype=np.int64), arms=run.arms[keep],
                                       clusters=run.clusters[keep], propensities=run.propensities[keep],
                                       rewards=run.rewards[keep], costs=run.costs[keep])  # fmt: skip
        out[lang] = evaluate(sub, [(0.0, part)]).gap_share
    return weight, seed, out


def replay_table(data: Path, weights: list[float], seeds: list[int], workers: int, learn_every: int) -> str:
    from multiprocessing import Pool

    files = tuple(sorted(glob.glob(str(data / "multilingual7" / "*.jsonl"))))
    jobs = [(w, s, files, learn_every) for w in weights for s in seeds]
    with Pool(workers) as pool:
        got = pool.map(_replay_cell, jobs, chunksize=1)
    keys = sorted({k for _, _, o in got for k in o}, key=lambda k: (k != "all", k))
    rows = [f"| [language] weight (seeds {','.join(map(str, seeds))}) | " + " | ".join(keys) + " |",
            "|---:" + "|---:" * len(keys) + "|"]  # fmt: skip
    for w in weights:
        mine = [o for w2, _, o in got if w2 == w]
        rows.append(f"| {w:g} | " + " | ".join(f"{np.mean([o[k] for o in mine]):+.3f}" for k in keys) + " |")
    per_seed = [f"seed {s}, weight {w:g}: " + ", ".join(f"{k} {o[k]:+.3f}" for k in keys) for w, s, o in got]
    return "\n".join(rows + ["", *per_seed])


def separation(data: Path, weights: list[float], n: int = 1500) -> str:
    from learner.clusters import assign_many, kmeans
    from learner.language import Cld2Detector, routing_context
    from learner.wordllama import WordLlamaEmbedder

    out = load_outcomes(sorted(glob.glob(str(data / "multilingual7" / "*.jsonl"))))
    idx = np.random.default_rng(0).choice(len(out), min(n, len(out)), replace=False)
    zh = np.array([_FILE_LANGUAGE.get(out.tasks[i]) == "zh" for i in idx])
    emb, det = WordLlamaEmbedder(256), Cld2Detector()
    rows = ["| weight | cos zh-zh | cos en-en | cos zh-en | k=4: prompts among the other language | k=8 |",
            "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for w in weights:
        x = np.stack([routing_context(out.prompts[i], emb, det, w)[2] for i in idx])
        sims = x @ x.T
        mixed = []
        for k in (4, 8):
            lab, _ = assign_many(x, kmeans(x, k, np.random.default_rng(1), starts=4))
            mixed.append(sum(min(int(zh[lab == j].sum()), int((~zh[lab == j]).sum())) for j in np.unique(lab)))
        rows.append(f"| {w:g} | {sims[zh][:, zh].mean():.3f} | {sims[~zh][:, ~zh].mean():.3f} | "
                    f"{sims[zh][:, ~zh].mean():.3f} | {mixed[0]} of {len(idx)} | {mixed[1]} of {len(idx)} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "data"), help="directory holding multilingual7/")
    parser.add_argument("--per-file", type=int, default=500)
    parser.add_argument("--replay", action="store_true", help="gap share per language with and without the step")
    parser.add_argument("--separation", action="store_true", help="how far apart the languages' contexts are")
    parser.add_argument("--weights", default="0,0.5,1")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--learn-every", type=int, default=10)
    args = parser.parse_args(argv)
    if args.separation:
        print(separation(Path(args.data), [float(w) for w in args.weights.split(",")]))
        return 0
    if args.replay:
        import logging

        logging.disable(logging.INFO)
        print(replay_table(Path(args.data), [float(w) for w in args.weights.split(",")],
                           [int(s) for s in args.seeds.split(",")], args.workers, args.learn_every))  # fmt: skip
        return 0
    sets = prompt_sets(Path(args.data), args.per_file)
    head = "| detector | " + " | ".join(f"{k} accuracy" for k in sets) + " | p50 ms | p99 ms | max ms | load s |"
    rows = [head, "|---" + "|---:" * (len(sets) + 4) + "|"]
    for name, load in CANDIDATES.items():
        got = measure(load, sets)
        if not got:
            rows.append(f"| {name} | not installed |")
            continue
        acc = " | ".join(f"{got[k]:.3f}" for k in sets)
        rows.append(f"| {name} | {acc} | {got['p50']:.3f} | {got['p99']:.3f} | {got['max']:.3f} | {got['load_s']:.2f} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
