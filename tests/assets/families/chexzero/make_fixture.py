"""Make the CheXzero fidelity fixture by running CheXzero's own code (see README.md).

Usage: python make_fixture.py CHEXZERO_CHECKOUT OUT_DIR

CHEXZERO_CHECKOUT holds the files of github.com/rajpurkarlab/CheXzero at commit 5c341db
(model.py, clip.py, simple_tokenizer.py, zero_shot.py, eval.py, data_process.py and
bpe_simple_vocab_16e6.txt.gz); it needs torch, torchvision, pandas, h5py, opencv and scikit-learn.
Writes ``chexzero_tiny.pt.gz`` (a tiny random CLIP in CheXzero's checkpoint layout),
``images/`` (the inputs) and ``expected.npz`` (their outputs).
"""

from __future__ import annotations

import gzip
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize

REAL = Path(__file__).resolve().parents[2] / "cxr-real" / "images"
IMAGES = [
    REAL / "covid_ARDSSevere.png",  # 409 x 512: a resampled, padded letterbox
    REAL / "covid_58cb9263f16e94305c730685358e4e_jumbo.png",  # 512 x 466
]
LABELS = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumothorax"]
TEMPLATES = ("{}", "no {}")


def main(checkout: Path, out: Path) -> None:
    sys.path.insert(0, str(checkout))
    PIL.Image.ANTIALIAS = PIL.Image.LANCZOS  # patch: Pillow 10 renamed the filter their preprocess names
    import clip  # their copy of OpenAI's clip.py
    import data_process
    import zero_shot
    from model import CLIP

    zero_shot.tqdm = lambda items: items  # patch: tqdm.notebook needs ipywidgets; it only shows progress

    torch.manual_seed(0)
    model = CLIP(
        embed_dim=64,
        image_resolution=224,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=2,
    ).eval()
    texts = [template.format(label) for template in TEMPLATES for label in LABELS]
    used = torch.unique(clip.tokenize(texts))
    with torch.no_grad():  # rows no text uses are zeroed so that the file compresses; outputs don't read them
        keep = torch.zeros(model.token_embedding.weight.shape[0], dtype=torch.bool)
        keep[used] = True
        model.token_embedding.weight[~keep] = 0
        model.logit_scale.fill_(4.6052)

    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    paths = []
    for source in IMAGES:
        shutil.copyfile(source, out / "images" / source.name)
        paths.append(out / "images" / source.name)
    synthetic = np.clip(
        np.add.outer(np.linspace(0, 200, 150), np.linspace(0, 55, 260))
        + np.random.default_rng(0).normal(0, 9, (150, 260)),
        0,
        255,
    ).astype(np.uint8)
    PIL.Image.fromarray(synthetic).save(out / "images" / "synthetic_260x150.png")
    paths.append(out / "images" / "synthetic_260x150.png")

    h5 = out / "cxr.h5"
    data_process.img_to_hdf5(paths, str(h5), resolution=224)
    transform = Compose(  # zero_shot.make with pretrained=True (the released best model)
        [
            Normalize((101.48761, 101.48761, 101.48761), (83.43944, 83.43944, 83.43944)),
            Resize(224, interpolation=InterpolationMode.BICUBIC),
        ]
    )
    dataset = zero_shot.CXRTestDataset(img_path=str(h5), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, shuffle=False)
    with torch.no_grad():
        pixels = np.stack([dataset.img_dset[i] for i in range(len(dataset))])
        image_embeddings = torch.cat([model.encode_image(batch["img"]) for batch in loader]).numpy()
        text_embeddings = model.encode_text(clip.tokenize(texts)).numpy()
    probabilities = zero_shot.run_softmax_eval(model, loader, LABELS, TEMPLATES)
    h5.unlink()

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    with gzip.open(out / "chexzero_tiny.pt.gz", "wb", compresslevel=9) as handle:
        handle.write(buffer.getvalue())
    np.savez_compressed(
        out / "expected.npz",
        images=np.array([p.name for p in paths]),
        letterboxed=pixels.astype(np.float32),
        labels=np.array(LABELS),
        texts=np.array(texts),
        image_embeddings=image_embeddings,
        text_embeddings=text_embeddings,
        probabilities=np.asarray(probabilities, dtype=np.float32),
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
