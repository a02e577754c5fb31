"""Draw the example input images the workflows name (example_inputs/*.png): simple shapes drawn here, so they are
free of third-party licences. Run from the repository root: `python3 scripts/make_example_inputs.py`.

The pack copies them into ComfyUI's input folder when it loads (only files that are not there yet), so a template
opened from the browser shows its inputs; replace them with your own pictures.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parents[1] / "example_inputs"


def character(size: tuple[int, int], background: tuple[int, int, int], scale: float, shift: int) -> Image.Image:
    """A cartoon character (round face, red hair, green coat) on a plain background, framed differently."""
    w, h = size
    image = Image.new("RGB", size, background)
    d = ImageDraw.Draw(image)
    cx, cy, r = w // 2 + shift, int(h * 0.42), int(min(w, h) * 0.22 * scale)
    d.ellipse([cx - 2.1 * r, cy + 0.9 * r, cx + 2.1 * r, cy + 4.5 * r], fill=(40, 120, 60))  # coat
    d.ellipse([cx - 1.25 * r, cy - 1.35 * r, cx + 1.25 * r, cy + 0.6 * r], fill=(200, 60, 30))  # hair
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(240, 200, 170))  # face
    for ex in (-0.4, 0.4):
        d.ellipse([cx + (ex - 0.12) * r, cy - 0.25 * r, cx + (ex + 0.12) * r, cy - 0.02 * r], fill=(30, 60, 40))
    for fx, fy in ((-0.55, 0.2), (-0.45, 0.3), (0.5, 0.22), (0.58, 0.32)):
        d.ellipse([cx + fx * r - 2, cy + fy * r - 2, cx + fx * r + 2, cy + fy * r + 2], fill=(190, 110, 80))
    d.arc([cx - 0.4 * r, cy + 0.1 * r, cx + 0.4 * r, cy + 0.55 * r], 20, 160, fill=(150, 50, 50), width=3)
    return image.filter(ImageFilter.SMOOTH)


def second_character() -> Image.Image:
    """Another cartoon character for the two-character workflows (short black hair, round glasses, yellow raincoat),
    framed like refdrop_character_1.png (512 x 640) so the two batch together without a crop."""
    w, h = 512, 640
    image = Image.new("RGB", (w, h), (236, 226, 210))
    d = ImageDraw.Draw(image)
    cx, cy, r = w // 2, int(h * 0.42), int(min(w, h) * 0.22 * 1.2)
    d.rounded_rectangle([cx - 2.0 * r, cy + 0.9 * r, cx + 2.0 * r, cy + 4.5 * r], radius=r, fill=(235, 190, 40))
    d.polygon([(cx - 0.35 * r, cy + 0.9 * r), (cx + 0.35 * r, cy + 0.9 * r), (cx, cy + 1.6 * r)], fill=(60, 60, 70))
    d.ellipse([cx - 1.1 * r, cy - 1.2 * r, cx + 1.1 * r, cy + 0.1 * r], fill=(30, 28, 32))  # short hair
    d.ellipse([cx - 0.95 * r, cy - 0.85 * r, cx + 0.95 * r, cy + 1.0 * r], fill=(150, 100, 70))  # face
    for ex in (-0.38, 0.38):  # eyes behind round glasses
        d.ellipse([cx + (ex - 0.1) * r, cy - 0.2 * r, cx + (ex + 0.1) * r, cy], fill=(25, 25, 30))
        d.ellipse([cx + (ex - 0.27) * r, cy - 0.37 * r, cx + (ex + 0.27) * r, cy + 0.17 * r], outline=(20, 20, 20),
                  width=5)  # fmt: skip
    d.line([(cx - 0.11 * r, cy - 0.12 * r), (cx + 0.11 * r, cy - 0.12 * r)], fill=(20, 20, 20), width=5)
    d.arc([cx - 0.35 * r, cy + 0.2 * r, cx + 0.35 * r, cy + 0.6 * r], 20, 160, fill=(90, 40, 40), width=4)
    return image.filter(ImageFilter.SMOOTH)


def structure() -> Image.Image:
    """A person-like silhouette on a bench: clear edges for the Canny ControlNet."""
    image = Image.new("RGB", (512, 512), (235, 235, 235))
    d = ImageDraw.Draw(image)
    d.rectangle([60, 330, 452, 350], fill=(120, 90, 60))  # bench
    d.rectangle([80, 350, 95, 450], fill=(120, 90, 60))
    d.rectangle([417, 350, 432, 450], fill=(120, 90, 60))
    d.ellipse([216, 110, 296, 190], fill=(60, 60, 60))  # head
    d.rounded_rectangle([196, 190, 316, 335], radius=30, fill=(60, 60, 60))  # body
    d.rectangle([206, 330, 236, 450], fill=(60, 60, 60))  # legs
    d.rectangle([276, 330, 306, 450], fill=(60, 60, 60))
    return image


def svd_start() -> Image.Image:
    """A small landscape with a robot: the SVD start frame (16:9)."""
    w, h = 512, 288
    image = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(image)
    for y in range(h):
        t = y / h
        d.line([(0, y), (w, y)], fill=(int(120 + 100 * t), int(170 + 60 * t), int(235 - 40 * t)))
    d.rectangle([0, 210, w, h], fill=(90, 160, 80))  # grass
    d.ellipse([400, 30, 460, 90], fill=(255, 230, 120))  # sun
    d.rounded_rectangle([220, 120, 300, 200], radius=12, fill=(170, 175, 185))  # robot body
    d.rounded_rectangle([230, 80, 290, 125], radius=10, fill=(190, 195, 205))  # head
    d.ellipse([240, 92, 256, 108], fill=(40, 110, 230))
    d.ellipse([264, 92, 280, 108], fill=(40, 110, 230))
    d.polygon([(225, 125), (295, 125), (285, 140), (235, 140)], fill=(240, 200, 40))  # scarf
    d.rectangle([232, 200, 248, 228], fill=(120, 125, 135))
    d.rectangle([272, 200, 288, 228], fill=(120, 125, 135))
    return image.filter(ImageFilter.SMOOTH)


def character_with_subject_alpha() -> Image.Image:
    """The character as one reference picture, its subject painted as the mask editor does: transparent where the
    subject is (LoadImage's MASK is 1 - alpha, so the subject is white in the mask)."""
    background = (215, 228, 240)
    image = character((512, 640), background, 1.2, 0)
    backdrop = Image.new("RGB", image.size, background)
    differs = ImageChops.difference(image, backdrop).convert("L").point(lambda v: 255 if v > 12 else 0)
    subject = differs.filter(ImageFilter.MaxFilter(9))
    alpha = subject.point(lambda v: 0 if v else 255)
    rgba = image.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def wan_start() -> Image.Image:
    """The Wan image-to-video start frame: the SVD landscape at Wan's 16:9."""
    return svd_start().resize((640, 360), Image.LANCZOS)


IMAGES = {
    "easyref_reference_1.png": lambda: character((256, 256), (225, 225, 235), 1.0, 0),
    "easyref_reference_2.png": lambda: character((224, 288), (240, 225, 200), 0.9, -10),
    "easyref_reference_3.png": lambda: character((320, 240), (200, 225, 240), 0.8, 40),
    "easyref_structure.png": structure,
    "refdrop_svd_input.png": svd_start,
    "refdrop_reference_character.png": character_with_subject_alpha,
    "refdrop_character_1.png": lambda: character((512, 640), (215, 228, 240), 1.2, 0),  # opaque: any model
    "refdrop_character_2.png": second_character,
    "refdrop_wan_input.png": wan_start,
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, draw in IMAGES.items():
        draw().save(OUT / name, optimize=True)
        print(f"wrote example_inputs/{name} ({(OUT / name).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
