"""What set_trainable changes is part of the model's config, so a save keeps it."""

import vlmzoo


def _trainable_parts(model) -> dict[str, bool]:
    return {
        part: any(p.requires_grad for p in getattr(model, part).parameters())
        for part in ("encoder", "adapter", "decoder")
    }


def test_set_trainable_records_the_modes_in_the_config():
    model = vlmzoo.create_model("tiny-llava")
    model.set_trainable(encoder="full", decoder="full", adapter="frozen")
    assert (model.config.train_encoder, model.config.train_adapter, model.config.train_decoder) == (
        "full",
        "frozen",
        "full",
    )


def test_a_reloaded_model_has_the_same_parts_trainable(tmp_path):
    model = vlmzoo.create_model("tiny-llava")
    model.set_trainable(encoder="full", adapter="frozen")
    vlmzoo.save(model, tmp_path / "m")
    reloaded = vlmzoo.load(tmp_path / "m")
    assert (
        _trainable_parts(reloaded)
        == _trainable_parts(model)
        == {
            "encoder": True,
            "adapter": False,
            "decoder": False,
        }
    )


def test_modes_left_out_keep_their_recorded_value():
    model = vlmzoo.create_model("tiny-llava")
    model.set_trainable(decoder="full")
    model.set_trainable(encoder="full")
    assert (model.config.train_encoder, model.config.train_decoder) == ("full", "full")
