"""Per-sample picture: clean, adversarial, perturbation map, ground truth, masks per victim.

Layout of the panel (RGB uint8, white background, ``GAP`` px between tiles, a
``HEAD`` px caption strip above each tile; tiles are the image's size, downscaled so
that the longer side is at most ``max_side``)::

    [ clean ]              [ adversarial ]          [ |adv − clean| map ]
    [ ground truth ]       [ prompts ]              [ the map's colour scale ]
    [ <victim>: clean ]    [ <victim>: attack ]     [ IoU clean -> adv per prompt ]   (one row per victim)

The perturbation map shows max over RGB of |adv − clean| in the perceptually uniform
``magma`` colour map on a fixed linear scale, black = 0 to light yellow = ``vmax``/255
(default: the attack's budget ε, so maps of one budget compare; else the image's own
maximum); the scale is drawn with its numbers in the row below. Text is
``FONT_SIZE`` px.

Masks are not stored in result rows, so :func:`show` re-runs the victims on this one
sample (:func:`predict_masks`, the only place that builds models); IoUs printed come
from the stored rows.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from ..errors import DataError, UadbenchError
from ..eval.prompts import BOX, POINT, PromptSet
from ..store import rundir as _rundir
from ..store.schema import CLEAN

log = logging.getLogger(__name__)
GAP = 4
FONT_SIZE = 14
HEAD = 22
LINE = 18
INFO_W = 300  # minimum width of the third column (perturbation tile and IoU text)
COLORS = [
    (255, 60, 60),
    (40, 150, 255),
    (60, 210, 60),
    (255, 190, 0),
    (200, 80, 255),
    (0, 210, 210),
]


@dataclasses.dataclass
class VictimMasks:
    """One victim's row of the panel.

    ``clean_masks``/``adv_masks``: bool (P, H, W) predictions for the panel's prompts
    on the clean and adversarial image, or None when the victim could not be run
    (``note`` says why). ``clean_iou``/``adv_iou``: stored IoUs (%) per prompt (NaN if
    unknown).
    """

    name: str
    clean_masks: np.ndarray | None = None
    adv_masks: np.ndarray | None = None
    clean_iou: Sequence[float] = ()
    adv_iou: Sequence[float] = ()
    note: str = ""


# ----------------------------------------------------------------------------- files
def adv_image_path(
    run_dir: str | Path,
    attack_name: str,
    attack_hash: str,
    surrogate: str,
    sample_id: str,
    seed: int = 0,
    code: str = "",
) -> Path:
    """Path of a cached adversarial PNG (:func:`uadbench.store.rundir.adv_path`); the
    arguments are the row's ``attack_name``, ``attack_hash``, ``surrogate`` and ``seed``,
    and the code key of the manifest's records (:func:`_code_key`)."""
    return Path(
        _rundir.adv_path(run_dir, attack_name, attack_hash, surrogate, sample_id, seed, code)
    )


def _code_key(manifest: dict[str, Any], attack_hash: str) -> str:
    """The code key (attack and surrogate code versions) of an attack's cached images."""
    rec = next(
        (
            a
            for a in manifest.get("attacks", [])
            if isinstance(a, dict) and a.get("hash") == attack_hash
        ),
        {},
    )
    sur = manifest.get("surrogate")
    return _rundir.code_key(
        rec.get("code", ""), sur.get("code", "") if isinstance(sur, dict) else ""
    )


def load_png(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file; :class:`DataError` naming it when unreadable."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from None


def load_clean_image(manifest: dict[str, Any], sample_id: str) -> np.ndarray:
    """The clean image of ``sample_id`` from the run's dataset (its manifest record,
    resolved by :meth:`Plugin.from_record`), RGB uint8 (H, W, 3)."""
    return np.asarray(load_clean_sample(manifest, sample_id).image, dtype=np.uint8)


def load_clean_sample(manifest: dict[str, Any], sample_id: str):
    """The :class:`~uadbench.datasets.base.Sample` (image, ground-truth masks if any)."""
    from ..engine.plan import Plugin

    ds = manifest.get("dataset")
    if not ds:
        raise UadbenchError("the run's manifest names no dataset; cannot load the clean image")
    p = Plugin.from_record("dataset", ds)
    return p.cls(p.config).load(sample_id)


# ----------------------------------------------------------------------------- prompts
def select_prompts(rows: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """Up to ``n`` prompts of one (sample, attack, victim), one per mask, alternating
    point and box, in prompt order. Returns the chosen rows."""
    rows = rows.sort_values("prompt_index")
    chosen, want = [], [POINT, BOX]
    for k, (_, g) in enumerate(rows.groupby("mask_index", sort=True)):
        if len(chosen) >= n:
            break
        pick = g[g["prompt_kind"] == want[k % 2]]
        chosen.append((pick if len(pick) else g).iloc[0])
    return pd.DataFrame(chosen).reset_index(drop=True)


def prompts_from_rows(rows: pd.DataFrame) -> PromptSet:
    """The :class:`PromptSet` stored in result rows (kinds, XYXY/XY coords, mask index)."""
    kinds = rows["prompt_kind"].to_numpy().astype("<U5")
    return PromptSet(
        kinds,
        rows[["x0", "y0", "x1", "y1"]].to_numpy(dtype=np.float64).reshape(len(rows), 4),
        rows["mask_index"].to_numpy(dtype=np.int64),
        np.where(kinds == POINT, 1, -1).astype(np.int64),
    )


def predict_masks(
    manifest: dict[str, Any],
    victims: Sequence[str],
    clean: np.ndarray,
    adv: np.ndarray,
    prompts: PromptSet,
    device: str = "cpu",
    transform: Any = None,
    seed: int = 0,
    sample_id: str = "",
) -> dict[str, tuple[np.ndarray | None, np.ndarray | None, str]]:
    """Re-run each victim (by label: two settings of one model are two victims) on the
    clean and adversarial image for ``prompts``, configured from its manifest record.

    Returns label -> (clean masks (P, H, W) bool, adversarial masks, note); a victim
    that cannot be built (unknown, missing weights, bad config) gets ``(None, None,
    reason)``. The only function here that builds models. With ``transform`` (a
    resolved transform Plugin), both images are seen through it as the run's evaluation
    saw them (the draw of ``seed`` and ``sample_id``), masks in the images' own frame.
    """
    from ..engine.jobs import predict_through
    from ..engine.plan import Plugin, resolve

    t = transform if transform is not None else resolve("transform", "identity")

    records = {}
    for v in manifest.get("victims", []):
        rec = v if isinstance(v, dict) else {"name": str(v)}
        records.setdefault(rec.get("label", rec.get("name")), rec)
    out: dict[str, tuple[np.ndarray | None, np.ndarray | None, str]] = {}
    for label in victims:
        try:
            rec = records.get(label)
            if rec is None:
                raise UadbenchError(f"the run's manifest has no victim labelled {label!r}")
            p = Plugin.from_record("victim", rec)
            model = p.cls(p.config, device=device)
            out[label] = (
                predict_through(model, t, clean, prompts, seed, sample_id)[0],
                predict_through(model, t, adv, prompts, seed, sample_id)[0],
                "",
            )
        except UadbenchError as exc:
            log.warning("show: victim %s not run: %s", label, exc)
            out[label] = (None, None, str(exc))
    return out


# ----------------------------------------------------------------------------- drawing
def _num(x: float) -> str:
    return "n/a" if x != x else f"{x:.1f}"


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _resize(img: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    if img.shape[:2] == hw:
        return img
    im = Image.fromarray(img)
    return np.asarray(im.resize((hw[1], hw[0]), Image.NEAREST if nearest else Image.BILINEAR))


def _magma() -> np.ndarray:
    from matplotlib import colormaps

    return np.round(colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def perturbation_scale(clean: np.ndarray, adv: np.ndarray, vmax: float | None = None) -> float:
    """The map's top value in /255: ``vmax`` if given (> 0), else max |adv − clean| (≥ 1)."""
    if vmax and vmax > 0:
        return float(vmax)
    return float(max(1, int(np.abs(adv.astype(np.int16) - clean.astype(np.int16)).max())))


def perturbation_tile(clean: np.ndarray, adv: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """max over RGB of |adv − clean| in magma, linear from 0 (black) to
    :func:`perturbation_scale` (light yellow; larger values clip there). uint8 H×W×3."""
    d = np.abs(adv.astype(np.int16) - clean.astype(np.int16)).max(axis=2).astype(np.float64)
    top = perturbation_scale(clean, adv, vmax)
    idx = np.clip(np.round(d / top * 255.0), 0, 255).astype(np.int64)
    return _magma()[idx]


def scale_tile(h: int, w: int, vmax: float) -> np.ndarray:
    """The perturbation map's colour bar with its numbers (0, vmax/2, vmax in /255)."""
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    font = _font()
    x0, x1, y0 = 8, w - 8, 4
    bar_h = max(8, min(24, h // 3))
    lut = _magma()
    for x in range(x0, x1):
        d.line(
            [(x, y0), (x, y0 + bar_h)],
            fill=tuple(int(c) for c in lut[(x - x0) * 255 // max(1, x1 - x0 - 1)]),
        )
    for frac in (0.0, 0.5, 1.0):
        x = x0 + frac * (x1 - x0 - 1)
        d.line([(x, y0 + bar_h), (x, y0 + bar_h + 4)], fill=(0, 0, 0))
        text = f"{frac * vmax:g}"
        tw = d.textlength(text, font=font)
        d.text((min(max(0, x - tw / 2), w - tw), y0 + bar_h + 5), text, fill=(0, 0, 0), font=font)
    y = y0 + bar_h + 5 + LINE + 2
    for line in textwrap.wrap(
        "|adv - clean| in /255, max over RGB; linear, magma; larger values clip", max(10, w // 8)
    ):
        if y + LINE > h:
            break
        d.text((x0, y), line, fill=(60, 60, 60), font=font)
        y += LINE
    return np.asarray(im)


def _overlay(
    img: np.ndarray, masks: np.ndarray | None, prompts: PromptSet | None, scale: float
) -> np.ndarray:
    out = img.astype(np.float64)
    if masks is not None:
        for k, m in enumerate(masks):
            m = _resize(m.astype(np.uint8) * 255, img.shape[:2], nearest=True) > 0
            out[m] = 0.5 * out[m] + 0.5 * np.array(COLORS[k % len(COLORS)], dtype=np.float64)
    im = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
    if prompts is not None:
        draw = ImageDraw.Draw(im)
        for k in range(len(prompts)):
            c = COLORS[k % len(COLORS)]
            x0, y0, x1, y1 = (prompts.coords[k] * scale).tolist()
            if prompts.kinds[k] == BOX:
                draw.rectangle([x0, y0, x1, y1], outline=c, width=2)
            else:
                draw.ellipse([x0 - 5, y0 - 5, x0 + 5, y0 + 5], fill=c, outline=(255, 255, 255))
    return np.asarray(im)


def panel_geometry(hw: tuple[int, int], n_victims: int, max_side: int | None = 768):
    """(tile h, tile w, scale, panel h, panel w) for an image of size ``hw``: tiles of
    h×w scaled by ``scale``; each row is :func:`row_height` tall (images at its top), the
    third column ``max(tile w, INFO_W)`` wide; 2 + ``n_victims`` rows."""
    h, w = hw
    scale = 1.0 if not max_side or max(h, w) <= max_side else max_side / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = 2 + n_victims
    return (
        th,
        tw,
        scale,
        GAP + rows * (HEAD + row_height(th) + GAP),
        GAP + 2 * (tw + GAP) + max(tw, INFO_W) + GAP,
    )


def row_height(th: int) -> int:
    """A row's height: the tile's, at least 5 lines of text."""
    return max(th, 5 * LINE + 4)


def build_panel(
    clean: np.ndarray,
    adv: np.ndarray,
    victims: Sequence[VictimMasks] = (),
    prompts: PromptSet | None = None,
    *,
    attack: str = "adversarial",
    max_side: int | None = 768,
    gt_masks: np.ndarray | None = None,
    vmax: float | None = None,
) -> tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """Compose the panel. ``clean``/``adv``: RGB uint8 (H, W, 3), same size;
    ``gt_masks``: bool (P, H, W), the ground-truth mask of each prompt (None: the
    dataset has none and IoUs are against the victim's clean prediction); ``vmax``: top
    of the perturbation map's scale in /255 (default: the image's max |adv − clean|).

    Returns ``(panel, tiles)``: the panel RGB uint8 (see module docstring for the
    layout and :func:`panel_geometry` for its size) and each tile's ``(y, x, h, w)``
    by name (``clean``, ``adversarial``, ``perturbation``, ``ground_truth``,
    ``prompts``, ``scale``, ``<victim>/clean``, ``<victim>/adversarial``,
    ``<victim>/iou``). Without downscaling the ``adversarial`` tile holds ``adv`` pixel
    for pixel.
    """
    if clean.shape != adv.shape:
        raise DataError(
            f"clean image {clean.shape} and adversarial image {adv.shape} differ in size"
        )
    th, tw, scale, ph, pw = panel_geometry(clean.shape[:2], len(victims), max_side)
    rh = row_height(th)
    iw = max(tw, INFO_W)
    canvas = Image.new("RGB", (pw, ph), (255, 255, 255))
    font = _font()
    tiles: dict[str, tuple[int, int, int, int]] = {}

    def put(name: str, caption: str, tile: np.ndarray, r: int, c: int) -> None:
        y = GAP + r * (HEAD + rh + GAP) + HEAD
        x = GAP + c * (tw + GAP)
        cw = tw if c < 2 else pw - x - GAP
        strip = Image.new("RGB", (cw, HEAD - 2), (255, 255, 255))  # caption clipped to its column
        ImageDraw.Draw(strip).text((0, 1), caption, fill=(0, 0, 0), font=font)
        canvas.paste(strip, (x, y - HEAD + 1))
        canvas.paste(Image.fromarray(tile), (x, y))
        tiles[name] = (y, x, tile.shape[0], tile.shape[1])

    def text_tile(lines: Sequence[tuple[str, tuple[int, int, int]]], w: int) -> np.ndarray:
        info = Image.new("RGB", (w, rh), (248, 248, 248))
        d = ImageDraw.Draw(info)
        y = 2
        for text, color in lines:
            for part in textwrap.wrap(text, max(10, w // 8)) or [""]:
                if y + LINE > rh:
                    break
                d.text((4, y), part, fill=color, font=font)
                y += LINE
        return np.asarray(info)

    c_small, a_small = _resize(clean, (th, tw)), _resize(adv, (th, tw))
    top = perturbation_scale(clean, adv, vmax)
    dmax = np.abs(adv.astype(np.int16) - clean.astype(np.int16)).max(axis=2)
    at_top = float((dmax >= top - 1e-9).mean()) if dmax.size else 0.0
    put("clean", "clean", c_small, 0, 0)
    put("adversarial", attack, a_small, 0, 1)
    put(
        "perturbation",
        f"|adv - clean|, 0 to {top:g}/255",
        _resize(perturbation_tile(clean, adv, vmax), (th, tw)),
        0,
        2,
    )
    n = len(prompts) if prompts is not None else 0
    if gt_masks is not None:
        put("ground_truth", "ground truth", _overlay(c_small, gt_masks, prompts, scale), 1, 0)
    else:
        put(
            "ground_truth",
            "no ground truth",
            text_tile([("IoU is against each victim's clean prediction", (120, 0, 0))], tw),
            1,
            0,
        )
    plines = [
        (f"#{k} {prompts.kinds[k]}, mask {int(prompts.mask_index[k])}", COLORS[k % len(COLORS)])
        for k in range(n)
    ]
    put("prompts", "prompts", text_tile(plines, tw), 1, 1)
    put("scale", f"perturbation scale ({100 * at_top:.0f}% of pixels at the top)",
        scale_tile(rh, iw, top), 1, 2)  # fmt: skip
    for r, vm in enumerate(victims, start=2):
        put(
            f"{vm.name}/clean",
            f"{vm.name}: clean",
            _overlay(c_small, vm.clean_masks, prompts, scale),
            r,
            0,
        )
        put(
            f"{vm.name}/adversarial",
            f"{vm.name}: {attack}",
            _overlay(a_small, vm.adv_masks, prompts, scale),
            r,
            1,
        )
        lines = []
        for k in range(n):
            ci = vm.clean_iou[k] if k < len(vm.clean_iou) else float("nan")
            ai = vm.adv_iou[k] if k < len(vm.adv_iou) else float("nan")
            lines.append(
                (f"#{k} {prompts.kinds[k]}: {_num(ci)} -> {_num(ai)}", COLORS[k % len(COLORS)])
            )
        if vm.note:
            lines.append((f"masks not drawn: {vm.note}", (150, 0, 0)))
        put(f"{vm.name}/iou", "IoU % (stored): clean -> adv", text_tile(lines, iw), r, 2)
    return np.asarray(canvas), tiles


# ----------------------------------------------------------------------------- show
def _seen(t: Any, image: np.ndarray, seed: int, sample_id: str) -> np.ndarray:
    """``image`` through transform ``t`` as the evaluation drew it; a transform that
    moved pixels is sampled back into the original frame (nearest), as the masks are."""
    from ..engine.jobs import through

    out, g = through(t, image, seed, sample_id)
    if g is None:
        return out
    h, w = image.shape[:2]
    yi = np.rint((np.arange(h) + 0.5) * g.sy + g.ty - 0.5).astype(np.int64)
    xi = np.rint((np.arange(w) + 0.5) * g.sx + g.tx - 0.5).astype(np.int64)
    back = np.zeros_like(image)
    vy, vx = (yi >= 0) & (yi < out.shape[0]), (xi >= 0) & (xi < out.shape[1])
    back[np.ix_(vy, vx)] = out[np.ix_(yi[vy], xi[vx])]
    return back


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s).strip("_") or "x"


def show(
    run_dir: str | Path,
    sample_id: str,
    attack: str | None = None,
    out: str | Path | None = None,
    *,
    device: str = "cpu",
    n_prompts: int = 3,
    victims: Sequence[str] | None = None,
    max_side: int | None = 768,
    transform: str | None = None,
) -> Path:
    """Write the panel of one sample and attack as PNG; returns its path.

    ``attack``: an attack label of the run (default ``uad`` if present, else the first
    attack). ``out``: default ``<run>/panels/<sample>_<attack>.png``. Victims default
    to all victims with rows for this sample (manifest order).
    """
    from ..config import check_device

    check_device(device, "show")
    run_dir = Path(run_dir)
    manifest = _rundir.load_manifest(run_dir)
    if manifest.get("kind") == "imported":
        raise UadbenchError(
            f"{run_dir} was imported from {manifest.get('source', 'elsewhere')} and has "
            "no adversarial images; `show` needs a run made by `uadbench run`"
        )
    rows = _rundir.load_rows(run_dir)
    tplug = None
    if transform is not None:  # draw what the victims saw through this transform
        from ..engine.plan import resolve

        have = list(dict.fromkeys(rows["transform"]))
        tplug = resolve("transform", transform)
        if tplug.label not in have:
            raise UadbenchError(
                f"transform {tplug.label!r} has no rows in {run_dir}; it has: {', '.join(have)}"
            )
    all_rows, rows = rows, rows[rows["transform"] == (tplug.label if tplug else "identity")]
    if rows.empty and not all_rows.empty:
        have = ", ".join(dict.fromkeys(all_rows["transform"]))
        raise UadbenchError(
            f"{run_dir} has no rows under the identity transform; pick one with --transform "
            f"({have})"
        )
    srows = rows[rows["sample_id"] == str(sample_id)]
    if srows.empty:
        some = ", ".join(sorted(rows["sample_id"].unique())[:5])
        raise UadbenchError(
            f"sample {sample_id!r} has no rows in {run_dir}; some ids there: {some}"
        )
    attacks = [a for a in dict.fromkeys(srows["attack"]) if a != CLEAN]
    if not attacks:
        raise UadbenchError(
            f"sample {sample_id!r} has only clean rows in {run_dir}; nothing to show"
        )
    if attack is None:  # the run's first attack (manifest order) with rows here
        order = [a["label"] if isinstance(a, dict) else str(a) for a in manifest.get("attacks", [])]
        attack = next((a for a in order if a in attacks), attacks[0])
    if attack not in attacks:
        raise UadbenchError(
            f"attack {attack!r} has no rows for sample {sample_id!r}; it has: {', '.join(attacks)}"
        )
    arows = srows[srows["attack"] == attack]
    first = arows.iloc[0]
    path = adv_image_path(
        run_dir,
        str(first["attack_name"]),
        str(first["attack_hash"]),
        str(first["surrogate"]),
        str(sample_id),
        int(first["seed"]),
        _code_key(manifest, str(first["attack_hash"])),
    )
    if not path.exists():
        raise UadbenchError(f"no adversarial image at {path}; was the run's adv/ folder deleted?")
    adv = load_png(path)
    sample = load_clean_sample(manifest, str(sample_id))
    clean = np.asarray(sample.image, dtype=np.uint8)
    vorder = [
        v.get("label", v.get("name")) if isinstance(v, dict) else str(v)
        for v in manifest.get("victims", [])
    ]
    present = list(dict.fromkeys(arows["victim"]))
    names = (
        list(victims)
        if victims
        else [v for v in vorder if v in present] + [v for v in present if v not in vorder]
    )
    chosen = select_prompts(arows[arows["victim"] == names[0]], n_prompts)
    prompts = prompts_from_rows(chosen)
    masks = predict_masks(
        manifest, names, clean, adv, prompts, device, tplug, int(first["seed"]), str(sample_id)
    )
    if tplug is not None:  # draw the images the victims saw, in the original frame
        clean, adv = (_seen(tplug, im, int(first["seed"]), str(sample_id)) for im in (clean, adv))
    vms = []
    for v in names:

        def iou_of(label: str, v=v) -> list[float]:
            r = srows[(srows["attack"] == label) & (srows["victim"] == v)].set_index(
                "prompt_index"
            )["iou"]
            return [float(r.get(int(i), np.nan)) for i in chosen["prompt_index"]]

        cm, am, note = masks[v]
        vms.append(VictimMasks(v, cm, am, iou_of(CLEAN), iou_of(attack), note))
    gt = None
    if sample.has_gt and (arows["reference"] == "gt").all():
        gt = np.asarray(sample.masks)[prompts.mask_index]
    eps = float(first["eps"])
    panel, _ = build_panel(
        clean,
        adv,
        vms,
        prompts,
        attack=attack,
        max_side=max_side,
        gt_masks=gt,
        vmax=round(eps * 255, 2) if eps > 0 else None,
    )
    stem = f"{_slug(str(sample_id))}_{_slug(attack)}"
    if tplug is not None and tplug.name != "identity":
        stem += f"_{_slug(tplug.label)}"
    out = Path(out) if out else run_dir / "panels" / f"{stem}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel).save(out)
    log.info("wrote %s", out)
    return out
