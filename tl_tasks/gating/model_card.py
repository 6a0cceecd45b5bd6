"""A model card for a variant of a run (Mitchell et al., 2019), built from the metrics database's run and result
only: the data lineage, the recipe and its reasons, test accuracy with its interval, per-class metrics and
changes, calibration, robustness, the gate's verdict and reason, and known limits.

`card(run, result)` gives the sections as plain data (the report renders them); `to_markdown` writes
`model_card.md`, which `write_card` puts beside a published champion's `champion.json`.
"""
from __future__ import annotations

from pathlib import Path

from tl_tasks.files import write_text_atomic

MODEL_CARD_FILE = "model_card.md"


def card(run: dict, result: dict) -> dict:
    """`{"title", "sections": [{"title", "facts": [(key, value)], "table": {"head", "rows"} or None,
    "text": [...]}]}`, from a run dict and one of its result dicts (as `MetricsStore.get_run` gives them)."""
    variant = result.get("variant") or "?"
    gate = result.get("gate") or {}
    sections = [_lineage(run), _recipe(result), _accuracy(run, result), _per_class(result), _calibration(result),
                _robustness(result), _gate(gate), _limits(run, result)]
    return {"title": f"Model card: {variant} of run {run.get('run_id')}",
            "sections": [s for s in sections if s]}


def to_markdown(c: dict) -> str:
    lines = [f"# {c['title']}", "", "Generated from the metrics database; every number below is stored there.", ""]
    for s in c["sections"]:
        lines += [f"## {s['title']}", ""]
        lines += [f"- **{k}**: {v}" for k, v in s.get("facts") or []]
        if s.get("facts"):
            lines.append("")
        table = s.get("table")
        if table:
            lines.append("| " + " | ".join(table["head"]) + " |")
            lines.append("|" + "|".join("---" for _ in table["head"]) + "|")
            lines += ["| " + " | ".join(str(x).replace("|", "/") for x in row) + " |" for row in table["rows"]]
            lines.append("")
        lines += [*(f"- {t}" for t in s.get("text") or []), ""] if s.get("text") else []
    return "\n".join(lines).rstrip() + "\n"


def write_card(folder: Path, run: dict, result: dict) -> Path:
    """Write `model_card.md` into a published champion's folder; returns its path."""
    path = Path(folder) / MODEL_CARD_FILE
    write_text_atomic(path, to_markdown(card(run, result)))
    return path


def write_champion_card(store, run_id: str, variant: str, folder: Path) -> Path:
    """The card of a just-gated champion, read back from the metrics database, beside its champion.json."""
    run = store.get_run(run_id)
    return write_card(folder, run, run["results"][variant])


# --- sections -------------------------------------------------------------------------------------------------

def _pct(x, digits: int = 2) -> str:
    return "not measured" if x is None else f"{x * 100:.{digits}f}%"


def _lineage(run: dict) -> dict:
    counts = ((run.get("data_summary") or {}).get("counts") or {})
    names = run.get("class_names") or []
    return {"title": "Data lineage", "facts": [
        ("Source", run.get("data_source") or "not recorded"),
        ("Data fingerprint", run.get("data_fingerprint") or "not recorded"),
        ("Lineage (test-set sha256)", run.get("lineage") or "unknown"),
        ("Images", ", ".join(f"{k} {v:,}" for k, v in counts.items() if isinstance(v, int)) or "not recorded"),
        ("Classes", f"{len(names)}: {', '.join(map(str, names))}" if names else "not recorded"),
        ("Profile / seed", f"{run.get('profile') or '?'} / {run.get('seed') if run.get('seed') is not None else '?'}"),
    ]}


def _recipe(result: dict) -> dict:
    info = result.get("train_info") or {}
    recipe = info.get("recipe") or {}
    rows = []
    for scope in ("variant", "profile"):
        for name, entry in (recipe.get(scope) or {}).items():
            if isinstance(entry, dict):
                rows.append((name, _short(entry.get("value")), entry.get("reason") or ""))
    items = [("Weights", result.get("weights") or "not recorded"),
             ("Epochs", f"{result.get('epochs_run') or '?'} run, best {result.get('best_epoch') or '?'}"),
             ("Training images", f"{info['train_images']:,}" if isinstance(info.get("train_images"), int)
              else "not recorded")]
    return {"title": "Recipe and its reasons", "facts": items,
            "table": {"head": ["Setting", "Value", "Why"], "rows": rows} if rows else None,
            "text": [] if rows else ["No recipe was recorded for this model (trained before recipes were kept)."]}


def _accuracy(run: dict, result: dict) -> dict:
    acc = result.get("accuracy")
    n = (result.get("eval_info") or {}).get("test_images") or ((run.get("data_summary") or {}).get("counts") or {}).get("test")
    gate = result.get("gate") or {}
    ci, level = gate.get("accuracy_ci"), 1 - float(gate.get("alpha") or 0.05)  # the gate's own interval
    where = f", {n:,} test images" if n else ""
    return {"title": "Test accuracy", "facts": [
        ("Accuracy", _pct(acc) + (f" ({level:.0%} CI {_pct(ci[0])} to {_pct(ci[1])}, Wilson{where})" if ci else "")),
        ("Top-3 accuracy", _pct(result.get("top3_accuracy"))),
        ("Macro F1", "not measured" if result.get("macro_f1") is None else f"{result['macro_f1']:.3f}"),
    ]}


def _per_class(result: dict) -> dict | None:
    per_class = result.get("per_class") or []
    if not per_class:
        return None
    changes = {c["class_name"]: c for c in result.get("class_changes") or []}
    head = ["Class", "Precision", "Recall", "F1", "Support"] + (["Recall vs champion", "Holm p"] if changes else [])
    rows = []
    for c in per_class:
        row = [c["class_name"], _fixed(c.get("precision")), _fixed(c.get("recall")), _fixed(c.get("f1")),
               c.get("support")]
        if changes:
            ch = changes.get(c["class_name"])
            row += [f"{ch['delta'] * 100:+.1f} pts" + (" (significant)" if ch["significant"] else ""),
                    f"{ch['p_holm']:.3g}"] if ch else ["", ""]
        rows.append(row)
    text = [] if changes else ["No per-class comparison with a champion is stored (first champion of its lineage, "
                               "or gated before per-class verdicts were recorded)."]
    return {"title": "Per-class metrics", "table": {"head": head, "rows": rows}, "text": text}


def _calibration(result: dict) -> dict:
    c = result.get("calibration")
    if not c:
        return {"title": "Calibration", "text": ["Not measured (evaluated before calibration was recorded)."]}
    return {"title": "Calibration", "facts": [
        ("Expected calibration error (15 bins)", _pct(c.get("ece"))),
        ("Temperature (fitted on the validation split)", f"{c['temperature']:.3f}" if c.get("temperature") else "?"),
        ("ECE after temperature scaling", _pct(c.get("ece_scaled"))),
    ]}


def _robustness(result: dict) -> dict:
    r = result.get("robustness")
    if not r:
        return {"title": "Robustness", "text": ["Not measured (evaluated before the corruption suite, or it was "
                                                "turned off)."]}
    rows = [[name, *(_pct(a, 1) for a in accs)] for name, accs in (r.get("by_corruption") or {}).items()]
    return {"title": "Robustness", "facts": [
        ("Mean accuracy under corruption", _pct(r.get("accuracy"))),
        ("Clean accuracy on the same images", _pct(r.get("clean_accuracy"))),
        ("Images", f"{r.get('images')} (a fixed stratified subset of the test set)"),
    ], "table": {"head": ["Corruption", "Severity 1", "Severity 2", "Severity 3"], "rows": rows}}


def _gate(gate: dict) -> dict:
    if not gate:
        return {"title": "Gate verdict", "text": ["No gate decision is recorded."]}
    cg = gate.get("class_gate") or {}
    items = [("Verdict", gate.get("decision") + (" (forced)" if gate.get("forced") else "")),
             ("Reason", gate.get("reason") or "not recorded")]
    if gate.get("champion_run_id"):
        items.append(("Compared with", f"the champion from run {gate['champion_run_id']}"))
    if cg:
        items.append(("Per-class gate", ("on" if cg.get("enabled") else "off")
                      + f", tolerance {cg.get('tolerance', 0) * 100:g} points"
                      + (f"; significantly worse: {', '.join(cg['worse'])}" if cg.get("worse") else "")))
    return {"title": "Gate verdict", "facts": items}


def _limits(run: dict, result: dict) -> dict:
    text = []
    weights = str(result.get("weights") or "")
    if weights in ("none", "random", "") or "random" in weights:
        text.append("Random-init weights: the ResNet50 base was not pretrained, so accuracy is far below what "
                    "ImageNet features reach." if result.get("variant", "").startswith("resnet")
                    else "Trained from random initialisation.")
    info = result.get("train_info") or {}
    if info.get("train_limit"):
        text.append(f"Trained on a subset of {info['train_limit']:,} images per the profile; not a full-data model.")
    if run.get("profile") == "smoke" or str(run.get("data_source") or "").startswith("synthetic"):
        text.append("Synthetic data (smoke profile): the numbers check the pipeline, not the model.")
    if info.get("input_size") and info["input_size"] < 64:
        text.append(f"Input {info['input_size']} px: small images limit what the network can resolve.")
    text += ["Evaluated on one test set (this lineage) only; performance on other image distributions is unknown.",
             "Robustness is measured on synthetic corruptions, not on real-world shifts.",
             "Per-class verdicts compare with the previous champion only; small classes have wide intervals."]
    return {"title": "Known limits", "text": text}


def _fixed(x) -> str:
    return "" if x is None else f"{x:.3f}"


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
