"""A1111's conditioning on tiny random-weight CLIP text models (``pipelines/tiny.py``) and the real tokenizer:
weights, 75-token chunks, BREAK, clip skip, embeddings, emphasis modes, SDXL, schedules and the step callback."""

from __future__ import annotations

import pytest
import torch

from pipelines.errors import InvalidRequest
from pipelines.prompt_encoding import (
    EncodeOptions,
    TextConditioner,
    apply_emphasis,
    count_prompt_tokens,
    encode_prompt_conditioning,
    tokenize_line,
)
from pipelines.tiny import tiny_text_encoder
from pipelines.tokenizers import OPENCLIP_PAD, clip_tokenizer

CAT, DOG = 2368, 1929  # "cat</w>", "dog</w>"


def _with_layer_norm_mean(encoder, seed: int):
    """Real CLIP's final layer norm has a learned bias; a fresh one has none, which makes every hidden state's mean
    zero and A1111's "restore the mean" step meaningless. Give the tiny model one."""
    norm = getattr(encoder, "text_model", encoder).final_layer_norm
    with torch.no_grad():
        norm.bias.copy_(torch.rand(norm.bias.shape, generator=torch.Generator().manual_seed(seed)) + 0.5)
    return encoder


@pytest.fixture(scope="module")
def sd1() -> TextConditioner:
    return TextConditioner.sd1(clip_tokenizer(), _with_layer_norm_mean(tiny_text_encoder(hidden_size=32, seed=0), 0))


@pytest.fixture(scope="module")
def sd2() -> TextConditioner:
    # the SD 2.x shape of things (OpenCLIP tokenizer padding, GELU) at a tiny width
    encoder = tiny_text_encoder(hidden_size=32, seed=3, hidden_act="gelu")
    return TextConditioner.sd2(clip_tokenizer(OPENCLIP_PAD), _with_layer_norm_mean(encoder, 3))


@pytest.fixture(scope="module")
def sdxl() -> TextConditioner:
    # the two encoders of tiny.tiny_sdxl_components
    first = tiny_text_encoder(hidden_size=32, seed=0)
    second = tiny_text_encoder(hidden_size=64, num_layers=10, seed=1, with_projection=True, hidden_act="gelu",
                               intermediate_size=32, projection_dim=32)
    return TextConditioner.for_family("sdxl", {
        "tokenizer": clip_tokenizer(), "text_encoder": _with_layer_norm_mean(first, 1),
        "tokenizer_2": clip_tokenizer(OPENCLIP_PAD), "text_encoder_2": _with_layer_norm_mean(second, 2),
    })


def embeds(conditioner: TextConditioner, prompt: str, negative: str = "", step: int = 0, **options) -> torch.Tensor:
    return encode_prompt_conditioning(conditioner, prompt, negative, 20, EncodeOptions(**options)).at_step(
        step).prompt_embeds


def plain(conditioner: TextConditioner, text: str, index: int = 0, padding: str | None = None) -> torch.Tensor:
    """What diffusers' own encode_prompt gives for a short text: tokenizer padding, last hidden state."""
    encoder = conditioner.encoders[index]
    ids = encoder.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder.text_encoder(input_ids=ids).last_hidden_state


# --- weights and emphasis ----------------------------------------------------------------------------------------
def test_weight_one_is_exactly_the_plain_word(sd1) -> None:
    cat = embeds(sd1, "a cat")
    assert torch.equal(embeds(sd1, "a (cat:1.0)"), cat)
    assert torch.equal(cat, plain(sd1, "a cat"))  # and exactly diffusers' encoding of the same text


def test_a_weight_changes_the_encoding_and_original_keeps_the_mean(sd1) -> None:
    cat, heavy = embeds(sd1, "a cat"), embeds(sd1, "a (cat:1.5)")
    assert not torch.allclose(heavy, cat)
    assert torch.allclose(heavy.mean(), cat.mean(), atol=1e-6)  # "Original": mean restored
    no_norm = embeds(sd1, "a (cat:1.5)", emphasis="No norm")
    assert torch.allclose(no_norm[0, 2], cat[0, 2] * 1.5) and torch.equal(no_norm[0, 1], cat[0, 1])
    assert torch.allclose(heavy, no_norm * (cat.mean() / no_norm.mean()), atol=1e-6)


def test_emphasis_none_and_ignore(sd1) -> None:
    weighted = "a (cat:1.5) [dog]"
    assert torch.equal(embeds(sd1, weighted, emphasis="Ignore"), embeds(sd1, "a cat dog"))
    none = embeds(sd1, weighted, emphasis="None")  # brackets are text, as A1111's "None"
    assert torch.equal(none, plain(sd1, weighted))
    assert not torch.equal(none, embeds(sd1, "a cat dog"))
    result = encode_prompt_conditioning(sd1, weighted, "", 20, EncodeOptions(emphasis="No norm"))
    assert result.infotext == {"Emphasis": "No norm"}
    assert encode_prompt_conditioning(sd1, "a cat", "", 20, EncodeOptions(emphasis="No norm")).infotext == {}
    with pytest.raises(InvalidRequest) as error:
        EncodeOptions(emphasis="Louder")
    assert error.value.field == "emphasis"


def test_original_rescales_over_the_whole_schedule_batch(sd1) -> None:
    # A1111 encodes every schedule entry of a prompt in one batch (repeats included) and restores the mean of the
    # whole batch, so even the unweighted "dog" entry is rescaled
    result = encode_prompt_conditioning(sd1, "[(cat:1.5)|dog]", "", 3)
    assert [entry.text for entry in result.positive[0].entries] == ["(cat:1.5)", "dog", "(cat:1.5)"]
    z = torch.cat([embeds(sd1, "cat"), embeds(sd1, "dog")])
    multipliers = torch.ones(2, 77)
    multipliers[0, 1] = 1.5
    expected = apply_emphasis(z, multipliers, "Original", batch_rows=[0, 1, 0])
    rows = z[[0, 1, 0]]
    weighted = (z * multipliers.unsqueeze(-1))[[0, 1, 0]]
    assert torch.allclose(expected, z * multipliers.unsqueeze(-1) * (rows.mean() / weighted.mean()))
    assert torch.allclose(result.at_step(0).prompt_embeds, expected[0:1], atol=1e-6)
    assert torch.allclose(result.at_step(2).prompt_embeds, expected[1:2], atol=1e-6)
    assert not torch.allclose(result.at_step(2).prompt_embeds, embeds(sd1, "dog"))


def test_a_model_whose_hidden_states_average_zero_gives_no_nan() -> None:
    # the --demo text encoder is a fresh tiny CLIP: its final layer norm makes every mean zero, where A1111's
    # mean / mean would be NaN; with every weight 1 the encoding is the plain one
    raw = TextConditioner.sd1(clip_tokenizer(), tiny_text_encoder(hidden_size=32, seed=0))
    assert plain(raw, "cat").mean() == 0  # exactly, with these weights
    assert torch.equal(embeds(raw, "cat"), plain(raw, "cat"))
    assert embeds(raw, "a (cat:1.5)").isfinite().all()


def test_a_bad_weight_is_a_422_naming_the_field(sd1) -> None:
    with pytest.raises(InvalidRequest) as error:
        encode_prompt_conditioning(sd1, "a cat", "(blurry:1.2.3)", 20)
    assert error.value.field == "negative_prompt" and error.value.http_status == 422


# --- chunks ------------------------------------------------------------------------------------------------------
def test_a_word_after_token_75_makes_a_second_chunk(sd1) -> None:
    full = "cat " * 75
    one, two, other = embeds(sd1, full), embeds(sd1, full + "dog"), embeds(sd1, full + "bird")
    assert one.shape == (1, 77, 32) and two.shape == (1, 154, 32)
    assert torch.equal(two[:, :77], one)  # the first chunk does not see the overflow
    assert not torch.equal(two[:, 77:], other[:, 77:])
    assert torch.equal(two[:, 77:], embeds(sd1, "dog"))  # each chunk is encoded on its own


def test_the_negative_is_padded_with_the_empty_prompt(sd1) -> None:
    step = encode_prompt_conditioning(sd1, "cat " * 80, "blurry", 20).at_step(0)
    assert step.prompt_embeds.shape == step.negative_prompt_embeds.shape == (1, 154, 32)
    assert torch.equal(step.negative_prompt_embeds[:, :77], embeds(sd1, "blurry"))
    assert torch.equal(step.negative_prompt_embeds[:, 77:], embeds(sd1, ""))
    reverse = encode_prompt_conditioning(sd1, "cat", "blurry " * 80, 20).at_step(0)
    assert torch.equal(reverse.prompt_embeds[:, 77:], embeds(sd1, ""))


def test_break_starts_a_new_chunk(sd1) -> None:
    both = embeds(sd1, "a cat BREAK a dog")
    assert both.shape == (1, 154, 32)
    assert torch.equal(both[:, :77], embeds(sd1, "a cat")) and torch.equal(both[:, 77:], embeds(sd1, "a dog"))
    assert embeds(sd1, "(a cat BREAK a dog)").shape == (1, 77, 32)  # A1111: BREAK inside brackets is a word


def test_comma_backtrack_moves_the_words_after_a_late_comma() -> None:
    tokenizer = clip_tokenizer()
    text = "cat " * 70 + ", " + "dog " * 10
    chunks, count = tokenize_line(text, tokenizer)
    assert [chunk.tokens[1:72] for chunk in chunks][0] == [CAT] * 70 + [267]
    assert chunks[0].tokens[72:] == [49407] * 5 and chunks[1].tokens[1:11] == [DOG] * 10
    assert count == 85  # the first chunk counts as 75
    kept, _ = tokenize_line(text, tokenizer, options=EncodeOptions(comma_padding_backtrack=0))
    assert kept[0].tokens[72:76] == [DOG] * 4
    far, _ = tokenize_line("cat " * 50 + ", " + "dog " * 30, tokenizer)  # comma 24 tokens back: stays
    assert far[0].tokens[52:76] == [DOG] * 24


def test_token_counter_follows_chunks() -> None:
    tokenizer = clip_tokenizer()
    assert str(count_prompt_tokens(tokenizer, "")) == "0/75"
    assert str(count_prompt_tokens(tokenizer, "a (cat:1.2)")) == "2/75"
    assert str(count_prompt_tokens(tokenizer, "cat " * 75)) == "75/75"
    assert str(count_prompt_tokens(tokenizer, "cat " * 90)) == "90/150"
    assert str(count_prompt_tokens(tokenizer, "a BREAK b")) == "76/150"
    assert str(count_prompt_tokens(tokenizer, "[cat|cat cat cat] AND dog")) == "3/75"  # largest text counts
    assert str(count_prompt_tokens(tokenizer, "a AND b c", is_positive=False)) == "4/75"
    assert str(count_prompt_tokens(tokenizer, "(x:1.2.3)")) == "9/75"  # counted as text instead of failing
    assert str(count_prompt_tokens(tokenizer, "mything", embeddings={"mything": torch.zeros(5, 32)})) == "5/75"


# --- clip skip and the three families -----------------------------------------------------------------------------
def test_clip_skip_two_is_the_normed_penultimate_layer(sd1) -> None:
    skip1, skip2 = embeds(sd1, "a cat"), embeds(sd1, "a cat", clip_skip=2)
    assert not torch.allclose(skip1, skip2)
    encoder = sd1.encoders[0].text_encoder
    ids = sd1.encoders[0].tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = encoder.final_layer_norm(encoder(input_ids=ids, output_hidden_states=True).hidden_states[-2])
    assert torch.equal(skip2, expected)
    assert embeds(sd1, "a cat", clip_skip=3).shape == (1, 77, 32)  # the embeddings layer of a 2-layer model
    with pytest.raises(InvalidRequest) as error:
        embeds(sd1, "a cat", clip_skip=4)
    assert error.value.field == "clip_skip"


def test_sd2_pads_with_zero_and_ignores_clip_skip(sd2) -> None:
    cat = embeds(sd2, "a cat")
    assert torch.equal(cat, plain(sd2, "a cat"))  # the "!" (id 0) tokenizer pads exactly as A1111's OpenCLIP
    assert torch.equal(embeds(sd2, "a cat", clip_skip=2), cat)
    chunk_ids = torch.tensor([49406, 320, CAT, 49407] + [0] * 73)
    with torch.no_grad():
        direct = sd2.encoders[0].text_encoder(input_ids=chunk_ids[None]).last_hidden_state
    assert torch.equal(cat, direct)


def test_sdxl_concatenates_penultimate_layers_and_pools_the_first_chunk(sdxl) -> None:
    long = "cat " * 75 + "dog"
    result = encode_prompt_conditioning(sdxl, long, "", 20).at_step(0)
    assert result.prompt_embeds.shape == (1, 154, 96) and result.pooled_prompt_embeds.shape == (1, 32)
    first_chunk = encode_prompt_conditioning(sdxl, "cat " * 75, "", 20).at_step(0)
    assert torch.equal(result.pooled_prompt_embeds, first_chunk.pooled_prompt_embeds)
    assert torch.equal(result.prompt_embeds[:, :77], first_chunk.prompt_embeds)
    other = encode_prompt_conditioning(sdxl, "dog " * 76, "", 20).at_step(0)
    assert not torch.equal(other.pooled_prompt_embeds, result.pooled_prompt_embeds)

    short = encode_prompt_conditioning(sdxl, "a cat", "", 20).at_step(0)
    clip_l, clip_g = sdxl.encoders
    ids_l = clip_l.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids_g = clip_g.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out_l = clip_l.text_encoder(input_ids=ids_l, output_hidden_states=True)
        out_g = clip_g.text_encoder(input_ids=ids_g, output_hidden_states=True)
    assert torch.equal(short.prompt_embeds, torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1))
    assert torch.equal(short.pooled_prompt_embeds, out_g.text_embeds)
    # A1111 zeroes SDXL's empty negative prompt (embeddings and pooled); clip skip is off for SDXL by default
    assert not short.negative_prompt_embeds.any() and not short.negative_pooled_prompt_embeds.any()
    assert torch.equal(encode_prompt_conditioning(sdxl, "a cat", "", 20, EncodeOptions(clip_skip=2)).at_step(
        0).prompt_embeds, short.prompt_embeds)
    l_skip = encode_prompt_conditioning(sdxl, "a cat", "", 20, EncodeOptions(clip_skip=1, sdxl_clip_l_skip=True))
    assert torch.equal(l_skip.at_step(0).prompt_embeds[..., :32], out_l.hidden_states[-1])
    assert encode_prompt_conditioning(sdxl, "a cat", "ugly", 20).at_step(0).negative_pooled_prompt_embeds.any()


# --- textual inversion --------------------------------------------------------------------------------------------
def token_vectors(conditioner: TextConditioner, text: str, index: int = 0) -> torch.Tensor:
    encoder = conditioner.encoders[index]
    ids = encoder.tokenizer(text, add_special_tokens=False).input_ids
    return encoder.text_encoder.get_input_embeddings().weight[ids].detach().clone()


def test_an_embedding_of_a_words_vectors_encodes_as_the_word(sd1) -> None:
    embeddings = {"mycat": token_vectors(sd1, "cat"), "fluffything": token_vectors(sd1, "red fluffy cat")}
    result = encode_prompt_conditioning(sd1, "a (mycat:1.2), fluffything", "mycat", 20, embeddings=embeddings)
    assert torch.equal(result.at_step(0).prompt_embeds, embeds(sd1, "a (cat:1.2), red fluffy cat"))
    assert torch.equal(result.at_step(0).negative_prompt_embeds, embeds(sd1, "cat"))
    assert result.used_embeddings == ("mycat", "fluffything")
    assert not torch.equal(embeds(sd1, "a mycat"), embeds(sd1, "a cat"))  # without the table it is text


def test_embedding_vectors_count_toward_the_chunk(sd1) -> None:
    tokenizer = sd1.encoders[0].tokenizer
    three = {"trio": torch.zeros(3, 32)}
    from pipelines.prompt_encoding import EmbeddingIndex

    index = EmbeddingIndex.build(tokenizer, {"trio": 3})
    chunks, count = tokenize_line("cat " * 73 + "trio", tokenizer, index)
    assert count == 78 and len(chunks) == 2  # 73 + 3 > 75: the whole embedding moves on
    assert chunks[0].tokens[74] == 49407 and chunks[1].fixes == [(0, "trio")] and chunks[1].tokens[1:4] == [0] * 3
    result = encode_prompt_conditioning(sd1, "cat " * 73 + "trio", "", 20, embeddings=three)
    assert result.at_step(0).prompt_embeds.shape == (1, 154, 32)


def test_embeddings_that_do_not_fit_the_model_are_skipped(sd1, sdxl) -> None:
    wrong = {"wide": torch.zeros(2, 768)}
    result = encode_prompt_conditioning(sd1, "a wide cat", "", 20, embeddings=wrong)
    assert result.skipped_embeddings == ("wide",) and result.used_embeddings == ()
    assert torch.equal(result.at_step(0).prompt_embeds, embeds(sd1, "a wide cat"))
    both = {"xlcat": {"clip_l": token_vectors(sdxl, "cat", 0), "clip_g": token_vectors(sdxl, "cat", 1)},
            "sd1only": token_vectors(sd1, "cat")}
    xl = encode_prompt_conditioning(sdxl, "a xlcat sd1only", "", 20, embeddings=both)
    assert xl.skipped_embeddings == ("sd1only",)
    assert torch.equal(xl.at_step(0).prompt_embeds,
                       encode_prompt_conditioning(sdxl, "a cat sd1only", "", 20).at_step(0).prompt_embeds)


# --- schedules and AND ---------------------------------------------------------------------------------------------
def test_prompt_editing_switches_at_a1111s_step(sd1) -> None:
    assert torch.equal(embeds(sd1, "[cat:dog:0]"), embeds(sd1, "dog"))
    result = encode_prompt_conditioning(sd1, "a [cat:dog:5]", "", 20)
    assert result.change_steps() == [6]
    assert all(torch.equal(result.at_step(step).prompt_embeds, embeds(sd1, "a cat")) for step in range(6))
    assert torch.equal(result.at_step(6).prompt_embeds, embeds(sd1, "a dog"))


def test_each_distinct_text_is_encoded_once(sd1) -> None:
    rows = []
    handle = sd1.encoders[0].text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        result = encode_prompt_conditioning(sd1, "a [cat|dog] [x:y:0.5]", "blurry", 40)
    finally:
        handle.remove()
    assert rows == [4, 1]  # one batch: "a cat x", "a dog x", "a cat y", "a dog y"; then the negative
    assert len(result.positive[0].entries) == 40
    assert len({id(entry.embeds) for entry in result.positive[0].entries}) == 4
    assert list(result.positive[0].encodings()) == ["a cat x", "a dog x", "a cat y", "a dog y"]


def test_step_callback_swaps_prompt_embeds_for_diffusers(sd1) -> None:
    result = encode_prompt_conditioning(sd1, "[cat:dog:2]", "[ugly:blurry:3]", 6)
    assert result.change_steps() == [3, 4]
    seen = []
    callback = result.step_callback(num_images_per_prompt=2, then=lambda pipe, i, t, kw: seen.append(i) or kw)
    start = result.at_step(0)
    current = torch.cat([start.negative_prompt_embeds] * 2 + [start.prompt_embeds] * 2)
    for i in range(6):
        current = callback(None, i, None, {"prompt_embeds": current})["prompt_embeds"]
        expected = result.at_step(i + 1) if i < 5 else None
        if expected is not None:
            assert current.shape == (4, 77, 32)
            assert torch.equal(current[:2], expected.negative_prompt_embeds.repeat(2, 1, 1))
            assert torch.equal(current[2:], expected.prompt_embeds.repeat(2, 1, 1))
    assert seen == list(range(6))
    assert torch.equal(current[3], embeds(sd1, "dog")[0]) and torch.equal(current[0], embeds(sd1, "blurry")[0])


def test_and_parts_keep_their_weights_and_pad_with_their_last_vector(sd1) -> None:
    result = encode_prompt_conditioning(sd1, "a cat AND " + "dog " * 80 + ":0.5", "", 20)
    assert result.is_composable
    step = result.at_step(0)
    assert step.weights == (1.0, 0.5) and step.prompt_embeds.shape == (2, 154, 32)
    cat = embeds(sd1, "a cat")
    assert torch.equal(step.prompt_embeds[0, :77], cat[0])
    assert torch.equal(step.prompt_embeds[0, 77:], cat[0, -1:].repeat(77, 1))  # A1111's stack_conds
    assert torch.equal(step.negative_prompt_embeds[:, 77:], embeds(sd1, ""))  # pad_cond with the empty prompt
    with pytest.raises(ValueError):
        result.step_callback()
    assert not encode_prompt_conditioning(sd1, "a cat", "", 20).is_composable
