#!/usr/bin/env python3
"""Scores the embedded model with lm-evaluation-harness twice, through `bamba serve` (lm-eval's
`local-completions` model: echo + logprobs for log-likelihoods, plain completions with stop strings for
generation) and through lm-eval's transformers backend (`hf`) on the same checkpoint, and compares them
item by item.

Both backends get the same token ids: the checkpoint's BOS first (`add_bos_token=True`; lm-eval's API
models leave it out by default, its transformers backend puts it in through the tokenizer).

Two tasks on local data drawn from the book the tiny model was trained on ("Around the World in Eighty
Days", shipped in the esaxx-rs crate), so nothing is downloaded:
  verne_mc   multiple choice (log-likelihood): a sentence's opening, its true ending among 3 endings of
             other sentences; acc and acc_norm.
  verne_gen  generation (greedy, until a period or a newline, at most 16 tokens): the rest of a sentence
             from its opening; exact_match and first_word against the book, and each output against the
             other backend's.

Usage: python3 scripts/lm_eval_compare.py [--bamba PATH] [--items N] [--out DIR]
       (needs lm-eval, torch, transformers; PATH defaults to target/release/bamba)
Prints one JSON object: each backend's scores and the largest per-item log-likelihood difference.
"""
import argparse
import glob
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(ROOT, "bamba-cli", "assets", "tiny-bamba")

MC_YAML = """task: verne_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""

GEN_YAML = """task: verne_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: answer
generation_kwargs:
  until: [".", "\\n"]
  max_gen_toks: 16
  do_sample: false
  temperature: 0.0
process_results: !function verne.score
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
  - metric: first_word
    aggregation: mean
    higher_is_better: true
"""

GEN_SCORE = '''def score(doc, results):
    said, truth = results[0].split(), doc["answer"].split()
    return {"exact_match": float(said == truth), "first_word": float(said[:1] == truth[:1])}
'''


def sentences():
    path = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/esaxx-rs-*/data/eighty.txt")))[-1]
    text = open(path, encoding="utf-8-sig").read()
    body = text[text.index("*** START OF THIS PROJECT GUTENBERG EBOOK"):text.index("*** END OF THIS PROJECT")]
    body = re.sub(r"\s+", " ", body)
    # plain sentences of 8 to 30 words
    out = [s.strip() for s in re.split(r"(?<=[.!?]) ", body)]
    return [s for s in out if 8 <= len(s.split()) <= 30 and s.endswith(".") and '"' not in s]


def write_tasks(out, items):
    rng = random.Random(0)
    pool = sentences()
    rng.shuffle(pool)
    mc, gen = [], []
    for s in pool[:items]:
        words = s.split()
        cut = len(words) // 2
        context, ending = " ".join(words[:cut]), " ".join(words[cut:])
        others = [" ".join(o.split()[len(o.split()) // 2:]) for o in rng.sample(pool, 3)]
        choices = others + [ending]
        rng.shuffle(choices)
        mc.append({"context": context, "choices": choices, "label": choices.index(ending)})
        gen.append({"context": context, "answer": " " + ending[:-1]})
    tasks = os.path.join(out, "tasks")
    os.makedirs(tasks, exist_ok=True)
    for name, rows in (("verne_mc", mc), ("verne_gen", gen)):
        with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(tasks, "verne_mc.yaml"), "w") as f:
        f.write(MC_YAML.format(data=os.path.join(out, "verne_mc.jsonl")))
    with open(os.path.join(tasks, "verne_gen.yaml"), "w") as f:
        f.write(GEN_YAML.format(data=os.path.join(out, "verne_gen.jsonl")))
    with open(os.path.join(tasks, "verne.py"), "w") as f:
        f.write(GEN_SCORE)
    return tasks


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lm_eval(model, model_args, tasks, out, name):
    cmd = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args,
           "--tasks", "verne_mc,verne_gen", "--include_path", tasks, "--output_path", os.path.join(out, name),
           "--log_samples", "--batch_size", "1"]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"))
    results = sorted(glob.glob(os.path.join(out, name, "**", "results_*.json"), recursive=True))[-1]
    samples = {task: sorted(glob.glob(os.path.join(out, name, "**", f"samples_{task}_*.jsonl"), recursive=True))[-1]
               for task in ("verne_mc", "verne_gen")}
    scores = json.load(open(results))["results"]
    rows = {task: [json.loads(line) for line in open(path)] for task, path in samples.items()}
    return scores, rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bamba", default=os.path.join(ROOT, "target", "release", "bamba"))
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--out", default=os.path.join(ROOT, "target", "lm-eval"))
    args = p.parse_args()
    out = os.path.abspath(args.out)
    tasks = write_tasks(out, args.items)

    port = free_port()
    server = subprocess.Popen([args.bamba, "serve", "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        served = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models"))["data"][0]["id"]
        bamba = lm_eval("local-completions",
                        f"model={served},base_url=http://127.0.0.1:{port}/v1/completions,tokenizer={MODEL},"
                        "tokenized_requests=True,add_bos_token=True,num_concurrent=4,max_retries=1",
                        tasks, out, "bamba")
    finally:
        server.terminate()
        server.wait()
    hf = lm_eval("hf", f"pretrained={MODEL},dtype=float32,add_bos_token=True", tasks, out, "hf")

    # per item: every choice's log-likelihood, and the generated text
    lls = lambda rows: [float(r[0]) for s in rows for r in s["filtered_resps"]]
    a, b = lls(bamba[1]["verne_mc"]), lls(hf[1]["verne_mc"])
    gen_a = [s["filtered_resps"][0] for s in bamba[1]["verne_gen"]]
    gen_b = [s["filtered_resps"][0] for s in hf[1]["verne_gen"]]
    pick = lambda scores: {task: {k: v for k, v in scores[task].items() if not k.startswith("alias")}
                           for task in ("verne_mc", "verne_gen")}
    print(json.dumps({
        "items": args.items,
        "bamba_serve": pick(bamba[0]),
        "transformers": pick(hf[0]),
        "loglikelihoods": len(a),
        "max_abs_loglikelihood_diff": max(abs(x - y) for x, y in zip(a, b)),
        "generations_equal": sum(x == y for x, y in zip(gen_a, gen_b)),
        "generations": len(gen_a),
    }, indent=2))


if __name__ == "__main__":
    main()
