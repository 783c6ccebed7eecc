"""builtin:xray: synthetic radiograph-like images with several findings each, made offline in seconds.

Each patient has an anatomy of their own (lung fields with rib shadows, spine, heart) and 1-4 images of it, taken
at one of two sites whose exposure and noise differ. Findings are drawn per patient with known prevalence, some
rare, and stay with the patient's images, so an image-level split leaks patients into validation (as in real
chest X-ray data). Each finding is a local change a radiologist would recognise:

- Cardiomegaly: a heart shadow 1.35x wider (hearts vary by +/-18% between patients);
- Effusion: fluid (brighter, rib shadows half hidden) filling the base of one lung, more common with Cardiomegaly;
- Nodule: a small round opacity in a lung; Mass: a large one (rare);
- Pneumothorax: a dark region without lung markings along the edge of one lung, with a thin pleural line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

XRAY_FINDINGS = ("Cardiomegaly", "Effusion", "Mass", "Nodule", "Pneumothorax")
PREVALENCE = {"Cardiomegaly": 0.22, "Effusion": 0.15, "Mass": 0.03, "Nodule": 0.12, "Pneumothorax": 0.06}
SITES = ("site-A", "site-B")


@dataclass
class XraySet:
    images: np.ndarray  # (N, S, S, 3) uint8, gray replicated to RGB
    labels: np.ndarray  # (N, 5) float32 0/1, columns in XRAY_FINDINGS order
    patients: list[str]
    sites: list[str]


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, sigma: float) -> np.ndarray:
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def _patient_findings(rng: np.random.Generator) -> dict[str, bool]:
    found = {name: bool(rng.random() < p) for name, p in PREVALENCE.items()}
    if found["Cardiomegaly"] and rng.random() < 0.25:  # heart failure brings fluid
        found["Effusion"] = True
    return found


# Lesion contrast and noise are set so that a small CNN does not separate every finding perfectly at 64 px.
def _draw(
    rng: np.random.Generator, size: int, anatomy: dict[str, float], found: dict[str, bool], site: int
) -> np.ndarray:
    """One image (S, S) float in [0, 1] of a patient's anatomy with their findings."""
    s = float(size)
    dy, dx = rng.normal(0, 0.015 * s, 2)  # positioning differs a little between images
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy, xx = yy - dy, xx - dx
    a = anatomy
    img = np.full((size, size), 0.12)
    img[_ellipse(yy, xx, 0.55 * s, 0.5 * s, 0.48 * s, 0.44 * s)] = 0.55  # the body
    lungs = []
    for side in (-1, 1):
        lung = _ellipse(yy, xx, a["lung_y"] * s, (0.5 + side * a["lung_dx"]) * s, a["lung_ry"] * s, a["lung_rx"] * s)
        lungs.append(lung)
        ribs = 0.06 * np.cos(2 * np.pi * (yy + 0.3 * np.abs(xx - 0.5 * s)) / (a["rib_period"] * s))
        img[lung] = (0.24 + ribs)[lung]
    img[np.abs(xx - 0.5 * s) < 0.045 * s] = 0.72  # the spine
    heart_rx = a["heart_rx"] * (1.35 if found["Cardiomegaly"] else 1.0)
    heart = _ellipse(yy, xx, 0.63 * s, 0.47 * s, 0.13 * s, heart_rx * s)
    img[heart] = 0.66
    if found["Effusion"]:
        lung = lungs[int(a["effusion_side"])]
        base = yy > (a["lung_y"] + a["lung_ry"] * a["effusion_level"]) * s
        img[lung & base] = 0.5 * img[lung & base] + 0.25  # fluid: brighter, rib shadows half hidden
    if found["Pneumothorax"]:
        side = int(a["ptx_side"])
        lung = lungs[side]
        edge = 0.5 + (2 * side - 1) * (a["lung_dx"] + 0.55 * a["lung_rx"])
        collapsed = lung & ((xx - edge * s) * (2 * side - 1) > 0)
        img[collapsed] = 0.13  # no lung markings: darker and flat
        line = lung & (np.abs(xx - edge * s) < 0.5)
        img[line] = 0.36
    for name, sigma, amp in (("Nodule", 0.03, 0.22), ("Mass", 0.07, 0.2)):
        if found[name]:
            cy, cx = a[f"{name}_y"] * s, a[f"{name}_x"] * s
            img = img + amp * _blob(yy, xx, cy, cx, sigma * s) * (lungs[0] | lungs[1])
    contrast, noise = ((1.0, 0.05), (0.75, 0.08))[site]
    img = 0.5 + contrast * (img - 0.5) + rng.normal(0, noise, img.shape)
    return np.clip(img, 0.0, 1.0)


def _anatomy(rng: np.random.Generator) -> dict[str, float]:
    side = float(rng.integers(0, 2))
    lesion_x = 0.5 + (2 * side - 1) * rng.uniform(0.14, 0.26)
    return {
        "lung_y": rng.uniform(0.45, 0.5),
        "lung_dx": rng.uniform(0.19, 0.23),
        "lung_ry": rng.uniform(0.25, 0.3),
        "lung_rx": rng.uniform(0.13, 0.16),
        "rib_period": rng.uniform(0.09, 0.12),
        "heart_rx": rng.uniform(0.09, 0.13),
        "effusion_level": rng.uniform(0.3, 0.6),
        "effusion_side": float(rng.integers(0, 2)),
        "ptx_side": float(rng.integers(0, 2)),
        "Nodule_y": rng.uniform(0.32, 0.6),
        "Nodule_x": lesion_x,
        "Mass_y": rng.uniform(0.35, 0.55),
        "Mass_x": 1.0 - lesion_x,
    }


def make_xray(n_images: int, size: int = 64, seed: int = 0) -> XraySet:
    """About `n_images` images (exactly that many) of patients with 1-4 images each."""
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    labels: list[list[float]] = []
    patients: list[str] = []
    sites: list[str] = []
    patient = 0
    while len(images) < n_images:
        anatomy, found, site = _anatomy(rng), _patient_findings(rng), int(rng.random() < 0.4)
        for _ in range(min(int(rng.integers(1, 5)), n_images - len(images))):
            images.append(_draw(rng, size, anatomy, found, site))
            labels.append([float(found[name]) for name in XRAY_FINDINGS])
            patients.append(f"P{patient:05d}")
            sites.append(SITES[site])
        patient += 1
    gray = np.round(np.stack(images) * 255).astype(np.uint8)
    return XraySet(np.repeat(gray[..., None], 3, axis=-1), np.asarray(labels, dtype=np.float32), patients, sites)
