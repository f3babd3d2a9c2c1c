#!/usr/bin/env python3
"""Trains the embedded default model: a tiny Bamba (4 layers, one of them attention) and a 512-token
byte-level BPE tokenizer, on Jules Verne's "Around the World in Eighty Days" (public domain,
Project Gutenberg #103). The text ships inside the `esaxx-rs` crate (a dependency of `tokenizers`),
so it is on any machine that has built bamba; pass its path to use another copy.

It writes, with transformers' own classes:
  bamba-cli/assets/tiny-bamba/   config.json, generation_config.json, model.safetensors (bf16),
                                 tokenizer.json, tokenizer_config.json
  tests/fixtures/tiny_reference.json
                                 what transformers' AutoTokenizer and BambaForCausalLM (float64,
                                 reloaded from disk) do with it: encodings, decodings and greedy
                                 generate() from text prompts. The tests compare bamba with these.

Usage: python3 scripts/train_tiny.py [TEXT_FILE] [--seconds N]   (needs torch, transformers, tokenizers)
"""
import glob
import json
import os
import re
import sys
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BambaConfig, BambaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "bamba-cli", "assets", "tiny-bamba")
REFERENCE = os.path.join(ROOT, "tests", "fixtures", "tiny_reference.json")
SPECIAL = "<|endoftext|>"


def book_text(path):
    text = open(path, encoding="utf-8-sig").read()
    start = text.index("*** START OF THIS PROJECT GUTENBERG EBOOK")
    end = text.index("*** END OF THIS PROJECT GUTENBERG EBOOK")
    body = text[text.index("\n", start) + 1:end]
    body = body[:body.rindex("End of Project Gutenberg")]
    # re-flow paragraphs: hard-wrapped lines become one line per paragraph
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", body)]
    return "\n".join(p for p in paragraphs if p)


def train_tokenizer(text):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n"), trainer)
    # BOS is added by the post-processor, as in Llama-3-style tokenizers (Bamba-9B's is one)
    tok.post_processor = processors.TemplateProcessing(single=f"{SPECIAL} $A", pair=f"{SPECIAL} $A {SPECIAL} $B",
                                                       special_tokens=[(SPECIAL, 0)])
    return tok


def main():
    argv = sys.argv[1:]
    seconds = 420
    if "--seconds" in argv:
        i = argv.index("--seconds")
        seconds = float(argv[i + 1])
        del argv[i:i + 2]
    args = [a for a in argv if not a.startswith("--")]
    path = args[0] if args else sorted(glob.glob(os.path.expanduser(
        "~/.cargo/registry/src/*/esaxx-rs-*/data/eighty.txt")))[-1]
    text = book_text(path)
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)

    os.makedirs(OUT, exist_ok=True)
    tok = train_tokenizer(text)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL, "eos_token": SPECIAL,
                   "pad_token": SPECIAL, "model_max_length": 2048}, f, indent=2)

    ids = torch.tensor(tok.encode(text, add_special_tokens=False).ids)
    print(f"{len(text)} chars -> {len(ids)} tokens", flush=True)

    config = BambaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[2],
        mamba_n_heads=8, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=32, mamba_d_conv=4,
        mamba_expand=2, mamba_chunk_size=64, max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=0, eos_token_id=0, use_mamba_kernels=False,
    )
    model = BambaForCausalLM(config)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    seq, batch = 128, 16
    start, step = time.time(), 0
    while time.time() - start < seconds:
        lr = 3e-3 * min(1.0, (step + 1) / 50) * max(0.1, 1 - (time.time() - start) / seconds)
        for g in optim.param_groups:
            g["lr"] = lr
        offsets = torch.randint(0, len(ids) - seq - 1, (batch,))
        x = torch.stack([ids[o:o + seq] for o in offsets])
        loss = model(input_ids=x, labels=x).loss
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
        step += 1
    print(f"trained {step} steps, last loss {loss.item():.3f}", flush=True)

    model = model.to(torch.bfloat16)
    model.save_pretrained(OUT)
    model.generation_config.save_pretrained(OUT)
    record_reference(text)


def record_reference(text):
    """What transformers does with the saved directory: the tests' reference."""
    hf_tok = AutoTokenizer.from_pretrained(OUT)
    model = BambaForCausalLM.from_pretrained(OUT, torch_dtype=torch.float64).eval()
    strings = ["Phileas Fogg", "", " leading space", "naïve café — 東京 🚂!", "line one\nline two\t tab",
               text[1000:1300]]
    encodings = [{"text": s, "ids": hf_tok(s).input_ids} for s in strings]
    decodings = [{"ids": e["ids"], "text": hf_tok.decode(e["ids"], skip_special_tokens=True)} for e in encodings]
    generations = []
    for prompt in ["Phileas Fogg", "The steamer", "\"Well, Passepartout,\" said"]:
        input_ids = hf_tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(input_ids, max_new_tokens=24, do_sample=False, use_cache=True)
        new = out[0, input_ids.shape[1]:].tolist()
        generations.append({"prompt": prompt, "prompt_ids": input_ids[0].tolist(), "generated_ids": new,
                            "text": hf_tok.decode(new, skip_special_tokens=True)})
        print(f"{prompt!r} -> {generations[-1]['text']!r}")
    with open(REFERENCE, "w") as f:
        json.dump({"encodings": encodings, "decodings": decodings, "generations": generations}, f, indent=1,
                  ensure_ascii=False)


if __name__ == "__main__":
    if "--reference-only" in sys.argv:
        p = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/esaxx-rs-*/data/eighty.txt")))[-1]
        record_reference(book_text(p))
    else:
        main()
