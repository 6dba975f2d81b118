"""The loaders against the facts in ../shared/data/README.md."""

import hashlib

import pytest
import torch

from pplvae.data import DataNotFoundError, ImageData, load_dataset
from pplvae.data.freyface import PACKAGED_FILE


def test_mnist_facts(mnist):
    assert mnist.x_train.shape == (60000, 784) and mnist.x_test.shape == (10000, 784)
    assert mnist.image_shape == (28, 28)
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.y_test.unique().tolist() == list(range(10))


def test_mnist_mean_test_pixel(data_dir):
    grey = load_dataset("mnist", data_dir, binarized=False)
    assert grey.x_test.mean().item() == pytest.approx(0.1325, abs=5e-5)
    assert 0 <= grey.x_train.min() and grey.x_train.max() <= 1


def test_test_binarization_is_fixed_and_training_is_dynamic(mnist, data_dir):
    assert set(mnist.x_test.unique().tolist()) == {0.0, 1.0}
    again = load_dataset("mnist", data_dir, train_size=10)
    assert torch.equal(mnist.x_test, again.x_test)
    first = next(again.train_batches(10))[0]
    second = next(again.train_batches(10))[0]
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first.sum(0), second.sum(0))  # fresh draws each epoch


def test_train_batches_cover_the_split_once_with_a_short_last_batch(data_dir):
    data = load_dataset("mnist", data_dir, train_size=1000, binarized=False)
    batches = list(data.train_batches(128))
    assert [len(x) for x, _ in batches] == [128] * 7 + [104]
    seen = torch.cat([y for _, y in batches]).sort().values
    assert torch.equal(seen, data.y_train.sort().values)


def test_freyface_facts():
    digest = hashlib.sha256(PACKAGED_FILE.read_bytes()).hexdigest()
    assert digest == "8ec20e7cc7a4e5e5da86769b428fdc8d7c39818e65fb639671b194ee439b7e50"
    frey = load_dataset("freyface")
    assert frey.x_train.shape == (1765, 560) and frey.x_test.shape == (200, 560)
    assert frey.image_shape == (28, 20) and frey.y_train is None
    pixels = torch.cat([frey.x_train, frey.x_test]) * 255
    assert pixels.min().item() == pytest.approx(8) and pixels.max().item() == pytest.approx(238)


def test_freyface_from_shared_folder_matches_packaged_copy(data_dir):
    assert torch.equal(load_dataset("freyface", data_dir).x_test, load_dataset("freyface").x_test)


def test_freyface_falls_back_to_the_packaged_copy_for_an_mnist_only_folder(tmp_path, monkeypatch):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)  # a --data-dir / $PPLVAE_DATA_DIR with MNIST alone
    packaged = load_dataset("freyface").x_test
    assert torch.equal(load_dataset("freyface", tmp_path).x_test, packaged)
    monkeypatch.setenv("PPLVAE_DATA_DIR", str(tmp_path))
    assert torch.equal(load_dataset("freyface").x_test, packaged)
    with pytest.raises(DataNotFoundError, match="frey_rawface.mat"):  # a named file that is not there
        load_dataset("freyface", tmp_path / "frey_rawface.mat")


def test_missing_folder_names_folders_and_fixes(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("mnist", tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "--data-dir" in message and "--download" in message


def test_corrupt_file_is_reported(tmp_path, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_dir / "MNIST" / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes()[:1000])  # truncated copies
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        load_dataset("mnist", tmp_path)


def test_env_var_and_cache_are_tried_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("PPLVAE_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("mnist")
    message = str(error.value)
    assert message.index(str(tmp_path / "env")) < message.index(str(tmp_path / "cache" / "pplvae"))


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="Unknown dataset 'cifar'.*mnist"):
        load_dataset("cifar")


@pytest.mark.parametrize(
    "bad, match",
    [(float("nan"), "non-finite"), (2.0, r"in \[0, 1\]")],
)
def test_bad_pixels_are_rejected(bad, match):
    x = torch.rand(4, 6)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=match):
        ImageData("toy", x, None, torch.rand(2, 6), None, (2, 3))


def test_wrong_width_is_rejected():
    with pytest.raises(ValueError, match=r"shape \(N, 6\)"):
        ImageData("toy", torch.rand(4, 5), None, torch.rand(2, 6), None, (2, 3))


def test_binarize_transform_is_public_as_the_docs_name_it():
    """``pplvae.data.Binarize`` (docs/writing_models.md, examples/) is the transform of ``pplvae.data.batches``."""
    from pplvae.data import Binarize
    from pplvae.data.batches import Binarize as Defined

    assert Binarize is Defined and Binarize()(torch.tensor([0.0, 1.0])).tolist() == [0.0, 1.0]
