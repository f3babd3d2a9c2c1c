"""Runs llama.cpp's convert_hf_to_gguf.py on a checkpoint whose BPE pre-tokenizer llama.cpp does not know
(the embedded tiny model's), naming it "gpt-2" (byte-level BPE, the same splitting) instead of failing.

Usage: python3 scripts/gguf_convert.py LLAMA_CPP_DIR CHECKPOINT_DIR OUT.gguf [--outtype f32|bf16]
"""

import runpy
import sys


def main():
    llama_cpp, checkpoint, out, *rest = sys.argv[1:]
    sys.path.insert(0, llama_cpp)
    sys.path.insert(0, f"{llama_cpp}/gguf-py")
    from conversion import base

    known = base.TextModel.get_vocab_base_pre

    def vocab_base_pre(self, tokenizer):
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", checkpoint, "--outfile", out, *rest]
    runpy.run_path(f"{llama_cpp}/convert_hf_to_gguf.py", run_name="__main__")


if __name__ == "__main__":
    main()
