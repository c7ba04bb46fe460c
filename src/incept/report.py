"""The evaluation report of `incept eval --report DIR`: per-class precision and recall, the
confusion matrix as text, CSV and PNG, the most confused pairs and the misclassified files.

Everything is computed from what `evaluate(..., classes=...)` counts: the confusion matrix
(rows: true class, columns: predicted class, every record once, summed over replicas) and
the list of misclassified records. Each file is written atomically, so an interrupted run
leaves the folder's previous files or the new ones, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

from incept.errors import UserError
from incept.files import write_atomically

# How many of the most confused pairs --json, summary.txt and the command's output show;
# confused_pairs.csv lists every pair that occurred.
TOP_PAIRS = 20

FILES = (
    "summary.txt",
    "per_class.csv",
    "confusion.txt",
    "confusion.csv",
    "confusion.png",
    "confused_pairs.csv",
    "misclassified.csv",
    "report.json",
)


def per_class(confusion: list[list[int]], classes: list[str]) -> list[dict]:
    """{"class", "precision", "recall", "support"} for each class. Precision is None for a
    class nothing was predicted as, recall None for a class with no records: both undefined."""
    rows = []
    for index, name in enumerate(classes):
        correct = confusion[index][index]
        support = sum(confusion[index])
        predicted = sum(row[index] for row in confusion)
        rows.append(
            {
                "class": name,
                "precision": correct / predicted if predicted else None,
                "recall": correct / support if support else None,
                "support": support,
            }
        )
    return rows


def confused_pairs(confusion: list[list[int]], classes: list[str]) -> list[dict]:
    """Every (true, predicted) pair of different classes that occurred, most frequent first
    (ties in label order)."""
    pairs = [
        (-count, true, guess)
        for true, row in enumerate(confusion)
        for guess, count in enumerate(row)
        if true != guess and count
    ]
    return [
        {"true": classes[true], "predicted": classes[guess], "count": -count}
        for count, true, guess in sorted(pairs)
    ]


def add_report(result: dict) -> dict:
    """`result` (evaluate_source's with report=True) with "per_class" and "confused_pairs"
    (the TOP_PAIRS most frequent) added."""
    confusion, classes = result["confusion"], result["classes"]
    report = {**result, "per_class": per_class(confusion, classes)}
    report["confused_pairs"] = confused_pairs(confusion, classes)[:TOP_PAIRS]
    # The long lists last, so that the figures lead in report.json and --json.
    for key in ("confusion", "misclassified"):
        report[key] = report.pop(key)
    return report


def check_folder(directory: str | Path) -> None:
    """Fails now, before the evaluation, when `directory` cannot become the report folder;
    makes nothing (a run that fails later leaves no empty folder behind)."""
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--report {directory} is a file; give a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot make the report folder {directory}: {existing} is a file")


def prepare_folder(directory: str | Path) -> Path:
    """The report folder, made now so that a path that cannot be one fails before the
    evaluation rather than after it."""
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--report {directory} is a file; give a folder") from None
    except OSError as error:
        raise UserError(f"cannot make the report folder {directory}: {error.strerror}") from None
    return folder


def write_report(directory: str | Path, report: dict, last_line: str) -> Path:
    """Writes FILES into `directory` from `add_report`'s dict; `last_line` is the command's
    result line, repeated at the top of summary.txt."""
    folder = prepare_folder(directory)
    classes, confusion = report["classes"], report["confusion"]
    files = {
        "summary.txt": _summary(report, last_line).encode(),
        "per_class.csv": _csv(
            ["class", "precision", "recall", "support"],
            (
                [r["class"], _number(r["precision"]), _number(r["recall"]), r["support"]]
                for r in report["per_class"]
            ),
        ),
        "confusion.txt": _matrix_text(confusion, classes).encode(),
        "confusion.csv": _csv(
            ["true \\ predicted", *classes],
            ([name, *row] for name, row in zip(classes, confusion)),
        ),
        "confusion.png": _matrix_png(confusion, classes),
        "confused_pairs.csv": _csv(
            ["true", "predicted", "count"],
            ([p["true"], p["predicted"], p["count"]] for p in confused_pairs(confusion, classes)),
        ),
        "misclassified.csv": _csv(
            ["file", "true", "predicted", "probability"],
            (
                [m["file"], m["true"], m["predicted"], f"{m['probability']:.6f}"]
                for m in report["misclassified"]
            ),
        ),
        "report.json": (json.dumps(report, indent=1) + "\n").encode(),
    }
    for name, data in files.items():
        write_atomically(folder / name, data)
    return folder


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _csv(header: list[str], rows) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def _summary(report: dict, last_line: str) -> str:
    width = max(len("class"), *(len(name) for name in report["classes"]))
    lines = [last_line, f"precision used: {report['precision']}", ""]
    lines.append(f"{'class':<{width}}  precision  recall  support")
    for row in report["per_class"]:
        precision, recall = _number(row["precision"]) or "-", _number(row["recall"]) or "-"
        lines.append(f"{row['class']:<{width}}  {precision:>9}  {recall:>6}  {row['support']:>7}")
    lines += ["", f"most confused pairs (true -> predicted: count), top {TOP_PAIRS}:"]
    lines += [f"{p['true']} -> {p['predicted']}: {p['count']}" for p in report["confused_pairs"]]
    if not report["confused_pairs"]:
        lines.append("none: every record was classified right")
    lines += ["", f"{len(report['misclassified'])} misclassified records: misclassified.csv"]
    return "\n".join(lines) + "\n"


def _matrix_text(confusion: list[list[int]], classes: list[str]) -> str:
    """The matrix aligned in columns: a row per true class, a column per predicted class."""
    header = ["true \\ predicted", *classes]
    rows = [header, *([name, *map(str, row)] for name, row in zip(classes, confusion))]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "".join(
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
        )
        + "\n"
        for row in rows
    )


def _matrix_png(confusion: list[list[int]], classes: list[str]) -> bytes:
    """The matrix as a picture: each cell shaded by its share of the true class's records
    (so rows of different sizes compare), with counts and class names while they fit."""
    count = len(classes)
    cell = max(2, min(40, 1200 // max(count, 1)))
    labelled = cell >= 12
    longest = max(len(name) for name in classes)
    margin = max(48, min(160, 8 + 6 * longest)) if labelled else 20
    side = margin + cell * count + 10
    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    draw.text((max(margin, 40), 4), "predicted ->", fill="black")
    draw.text((4, 4), "true", fill="black")
    top = margin  # the cells start below the column names, right of the row names
    for true, row in enumerate(confusion):
        support = sum(row) or 1
        for guess, value in enumerate(row):
            # Blue for right answers, red for confusions, white for none: even one record in
            # thousands gets a visible tint.
            shade = 235 - int(185 * value / support) if value else 255
            colour = (shade, shade, 255) if true == guess else (255, shade, shade)
            box = (margin + guess * cell, top + true * cell)
            draw.rectangle((*box, box[0] + cell - 1, box[1] + cell - 1), fill=colour)
            if labelled and value:
                draw.text((box[0] + 2, box[1] + 2), str(value), fill="black")
        if labelled:
            draw.text((4, top + true * cell + 2), classes[true][: margin // 6 - 1], fill="black")
    if labelled:
        for guess, name in enumerate(classes):
            # Column names run upwards from the cells' top edge, as many letters as fit.
            label = Image.new("RGB", (margin - 22, cell - 2), "white")
            ImageDraw.Draw(label).text((2, 0), name, fill="black")
            image.paste(label.rotate(90, expand=True), (margin + guess * cell + 1, 20))
    data = io.BytesIO()
    image.save(data, "PNG")
    return data.getvalue()
