#!/usr/bin/env python3
"""Writes the CLIP BPE vocabulary in transformers' format (vocab.json + merges.txt).

Source: `bpe_simple_vocab_16e6.txt.gz`, shipped inside the open_clip_torch package (the file OpenAI
released with CLIP). The result is the vocabulary of openai/clip-vit-large-patch14 (49408 tokens):
the 256 byte-level characters, their `</w>` forms, one token per merge (48894), then
`<|startoftext|>` (49406) and `<|endoftext|>` (49407). merges.txt starts with the "#version: 0.2"
header line, as in the Hugging Face repository.

Usage (no network needed):
    /work/venv/bin/python tools/make_clip_tokenizer.py [OUT_DIR]
OUT_DIR defaults to Tests/EngineTests/Fixtures/tokenizer/.
"""
import gzip
import json
import os
import sys

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "EngineTests", "Fixtures", "tokenizer")
NUM_MERGES = 49152 - 256 - 2  # the slice open_clip and OpenAI's CLIP take from the file


def bytes_to_unicode():
    """GPT-2/CLIP byte -> printable character table (same order as OpenAI's `bytes_to_unicode`)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main():
    out_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT)
    import open_clip.tokenizer as oct

    bpe_path = oct.default_bpe()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    assert len(merges) == NUM_MERGES and all(len(m) == 2 for m in merges), "unexpected BPE file"

    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == len(vocab)
    encoder = {tok: i for i, tok in enumerate(vocab)}

    os.makedirs(out_dir, exist_ok=True)
    vocab_file = os.path.join(out_dir, "vocab.json")
    merges_file = os.path.join(out_dir, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")

    # Check: transformers loads the files and agrees with open_clip's own tokenizer.
    import transformers
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(vocab_file, merges_file)  # positional: (vocab_file, merges_file) in 4.x, (vocab, merges) in 5.x
    text = "a photo of a cat"
    hf_ids = tok(text)["input_ids"]
    oc_ids = oct.SimpleTokenizer()(text, context_length=77)[0].tolist()
    oc_ids = oc_ids[: oc_ids.index(49407) + 1]
    assert hf_ids == oc_ids, (hf_ids, oc_ids)
    assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407 and tok.pad_token_id == 49407
    assert len(tok) == 49408, len(tok)
    print(f"wrote {vocab_file} and {merges_file} ({len(vocab)} tokens, {len(merges)} merges); "
          f"transformers {transformers.__version__} {type(tok).__name__} ids for {text!r}: {hf_ids}")


if __name__ == "__main__":
    main()
