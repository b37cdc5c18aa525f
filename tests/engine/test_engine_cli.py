"""`hymba generate`, `hymba chat` and `hymba cache-size` end to end, on a checkpoint the tests create. The
commands run on the engine; their greedy text is checked against the one-call `generate`, an independent
decoding loop."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from hymba.cli import main
from hymba.engine import LLM, SamplingParams
from hymba.engine.generate import generate


def expected_continuation(model, tok, ids, **kw) -> str:
    out = generate(model, torch.tensor([ids]), tokenizer=tok, **kw)
    return tok.decode(out[0, len(ids):])


def test_generate_streams_the_greedy_continuation(checkpoint_dir, checkpoint, capsys):
    model, tok = checkpoint
    code = main(["generate", "--model", checkpoint_dir, "--prompt", "The quick brown", "--max-new-tokens", "20"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == expected_continuation(model, tok, tok.encode("The quick brown"), max_new_tokens=20) + "\n"
    assert "tokens" in err and "decode" in err  # the statistics line goes to stderr


def test_generate_samples_reproducibly_and_honours_stop(checkpoint_dir, checkpoint, capsys):
    model, tok = checkpoint
    args = ["generate", "--model", checkpoint_dir, "--prompt", "Meta tokens", "--max-new-tokens", "25",
            "--temperature", "0.9", "--top-p", "0.9", "--top-k", "40", "--seed", "3", "--quiet"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    ids = tok.encode("Meta tokens")
    [want] = LLM(model, tok, max_num_seqs=2).generate([ids], SamplingParams(max_tokens=25, temperature=0.9,
                                                                            top_p=0.9, top_k=40, seed=3))
    text = want.outputs[0].text
    assert first == text + "\n"
    assert main(args[:-2] + ["4", "--quiet"]) == 0  # another seed, another text
    assert capsys.readouterr().out != first
    stop = text[5:8]
    assert main(args + ["--stop", stop]) == 0
    assert capsys.readouterr().out == text[:text.index(stop)] + "\n"  # cut before the stop string


def test_generate_refuses_a_request_past_the_context(checkpoint_dir, checkpoint, capsys):
    model, _ = checkpoint
    limit = model.config.max_position_embeddings
    assert main(["generate", "--model", checkpoint_dir, "--prompt", "hi", "--max-new-tokens", str(limit)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hymba generate: error: the prompt has") and f"max_model_len ({limit})" in err


def test_generate_with_the_chat_template(checkpoint_dir, checkpoint, capsys):
    model, tok = checkpoint
    assert main(["generate", "--model", checkpoint_dir, "--prompt", "hello there", "--chat", "--system", "be brief",
                 "--max-new-tokens", "10", "--quiet"]) == 0
    ids = tok.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
                                  add_generation_prompt=True, tokenize=True)
    assert capsys.readouterr().out == expected_continuation(model, tok, ids, max_new_tokens=10) + "\n"


def test_generate_reads_the_prompt_from_stdin(checkpoint_dir, checkpoint, capsys, monkeypatch):
    model, tok = checkpoint
    monkeypatch.setattr(sys, "stdin", io.StringIO("The quick brown"))
    assert main(["generate", "--model", checkpoint_dir, "--prompt-file", "-", "--max-new-tokens", "5", "--quiet"]) == 0
    assert capsys.readouterr().out == expected_continuation(model, tok, tok.encode("The quick brown"),
                                                            max_new_tokens=5) + "\n"


@pytest.mark.parametrize("argv, message", [
    (["--model", "/nonexistent/dir"], "--model /nonexistent/dir: no such directory"),
    (["--tokenizer", "/nonexistent/tok"], "no tokenizer.json in /nonexistent/tok"),
    (["--device", "cuda:0"], "CUDA"),
])
def test_generate_errors_are_clear(checkpoint_dir, capsys, argv, message):
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    base = {"--model": checkpoint_dir}
    args = ["generate", "--prompt", "hi"]
    given = dict(zip(argv[::2], argv[1::2]))
    for k, v in {**base, **given}.items():
        args += [k, v]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_generate_without_a_tokenizer_says_so(tmp_path, checkpoint, capsys):
    model, _ = checkpoint
    model.save_pretrained(tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--prompt", "hi"]) == 2
    assert f"no tokenizer.json in {tmp_path}; pass --tokenizer DIR" in capsys.readouterr().err


def test_chat_multi_turn_reset_and_exit(checkpoint_dir, checkpoint, capsys, monkeypatch):
    model, tok = checkpoint
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\nhow are you?\n/reset\nhow are you?\n/exit\nnever read\n"))
    assert main(["chat", "--model", checkpoint_dir, "--system", "be brief", "--max-new-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    replies = out.split("\n")[:-1]
    assert len(replies) == 3 and "(conversation reset)" in err

    system = {"role": "system", "content": "be brief"}

    def reply(messages):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return expected_continuation(model, tok, ids, max_new_tokens=12)

    first = reply([system, {"role": "user", "content": "hello there"}])
    second = reply([system, {"role": "user", "content": "hello there"}, {"role": "assistant", "content": first.strip()},
                    {"role": "user", "content": "how are you?"}])
    after_reset = reply([system, {"role": "user", "content": "how are you?"}])
    assert replies == [first, second, after_reset]
    assert second != after_reset  # the second turn did see the first one


def test_chat_ends_at_end_of_input(checkpoint_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\n"))
    assert main(["chat", "--model", checkpoint_dir, "--max-new-tokens", "4"]) == 0
    assert len(capsys.readouterr().out.split("\n")) == 2


def test_chat_needs_a_chat_template(tmp_path, checkpoint, capsys):
    model, tok = checkpoint
    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert main(["chat", "--model", str(tmp_path)]) == 2
    assert "no chat_template" in capsys.readouterr().err


def test_cache_size_shows_the_paper_figure_and_the_ratios(capsys, tmp_path):
    plot, figures = tmp_path / "cache.png", tmp_path / "cache.json"
    assert main(["cache-size", "--config", "hymba-1.5b", "--seq-len", "8192", "--dtype", "float16",
                 "--plot", str(plot), "--json", str(figures)]) == 0
    out = capsys.readouterr().out
    assert "78.60" in out
    r = json.loads(figures.read_text())
    # Hand count, fp16 (2 bytes), 5 K/V heads x (64 + 128) per token per K/V-making layer:
    # 3 global layers x 8192 tokens; 14 window layers make K/V (groups [1,2]..[13,14], [16,17,18],
    # [19,20]..[29,30]) x 1024 tokens; 32 layers x (SSM 3200 x 16 + conv 3200 x 3).
    per_token = 5 * (64 + 128) * 2
    paper = 3 * 8192 * per_token + 14 * 1024 * per_token + 32 * (3200 * 16 + 3200 * 3) * 2
    assert r["hymba"]["paper_count_bytes"] == paper and round(paper / 1e6, 2) == 78.60
    # Ours adds 128 meta-token K/V in each of the 17 producers, the SSM state in fp32, slot positions (int32).
    footprint = paper + 17 * 128 * per_token + 32 * 3200 * 16 * 2 + 4 * ((128 + 8192) + (128 + 1024))
    assert r["hymba"]["footprint_bytes"] == footprint
    assert f"{footprint / 1e6:.2f}" in out
    llama3b = next(o for o in r["references"] if o["name"] == "Llama-3.2-3B")
    assert llama3b["bytes"] == 2 * 28 * 8 * 128 * 8192 * 2
    assert llama3b["ratio_to_paper_count"] >= 11.6 and f"{llama3b['ratio_to_paper_count']:.2f}x" in out
    assert {o["name"] for o in r["references"]} == {"Llama-3.2-1B", "Llama-3.2-3B", "Qwen2.5-1.5B", "SmolLM2-1.7B"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cache_size_reads_a_checkpoint_directory_and_batches(checkpoint_dir, capsys):
    assert main(["cache-size", "--config", checkpoint_dir, "--seq-len", "100", "--batch", "3"]) == 0
    from hymba import HymbaConfig
    from hymba.modeling.cache import cache_bytes

    total = sum(cache_bytes(HymbaConfig.from_json(checkpoint_dir), 3, 100, torch.float16).values())
    assert f"{total / 1e6:.2f}" in capsys.readouterr().out


def test_cache_size_errors_name_the_problem(capsys, tmp_path):
    assert main(["cache-size", "--config", "hymba-15b", "--seq-len", "8"]) == 2
    err = capsys.readouterr().err
    assert "'hymba-15b' is neither an existing directory" in err and "hymba-1.5b" in err
    assert main(["cache-size", "--config", str(tmp_path), "--seq-len", "8"]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["cache-size", "--config", "tiny", "--seq-len", "0"]) == 2


def test_the_installed_command_runs(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "hymba")
    assert os.path.exists(exe), "the hymba console script is not installed in this environment"
    done = subprocess.run([exe, "cache-size", "--config", "hymba-1.5b", "--seq-len", "8192"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "78.60" in done.stdout and "Llama-3.2-3B" in done.stdout


def test_stop_escapes_typed_on_a_command_line():
    from hymba.cli.generate import unescape

    assert unescape(r"a\nb\tc") == "a\nb\tc"
    assert unescape(r"\\n") == "\\n"  # an escaped backslash stays a backslash
    assert unescape(r"C:\x") == r"C:\x"  # anything else is left alone


def greedy_by_full_forwards(model, ids, max_new, eos):
    """Greedy tokens by an argmax over a full forward of the whole sequence at every step (no cache)."""
    new = []
    for _ in range(max_new):
        with torch.no_grad():
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
        new.append(token)
        if token in eos:
            break
    return new


@pytest.mark.parametrize("prompt, chunk", [("The quick brown", None), ("A longer prompt, prefilled in chunks: " * 3, "5")])
def test_generate_greedy_is_the_engine_and_the_full_forward_argmax(checkpoint_dir, checkpoint, capsys, prompt, chunk):
    model, tok = checkpoint
    argv = ["generate", "--model", checkpoint_dir, "--prompt", prompt, "--max-new-tokens", "24", "--quiet"]
    assert main(argv + (["--prefill-chunk-size", chunk] if chunk else [])) == 0  # 5: taken as 16, a chunked prompt
    out = capsys.readouterr().out
    ids = tok.encode(prompt)
    [engine_out] = LLM(model, tok).generate([ids], SamplingParams(temperature=0, max_tokens=24))
    assert out == engine_out.outputs[0].text + "\n"
    assert engine_out.outputs[0].token_ids == greedy_by_full_forwards(model, ids, 24, set(model.config.eos_token_ids))


def test_generate_takes_any_integer_seed(checkpoint_dir, capsys):
    args = ["generate", "--model", checkpoint_dir, "--prompt", "hi", "--max-new-tokens", "6", "--temperature", "1",
            "--quiet", "--seed"]
    assert main(args + ["-1"]) == 0
    first = capsys.readouterr().out
    assert main(args + [str(2**63 - 1)]) == 0  # the same seed modulo 2**63
    assert capsys.readouterr().out == first


def test_an_interrupted_reply_leaves_the_engine_ready_for_the_next(checkpoint, monkeypatch):
    """Ctrl-C while a reply streams: the request is aborted, and the next one gets its full greedy text."""
    from hymba.cli.generate import stream
    from hymba.engine import Engine

    model, tok = checkpoint
    engine = Engine(model, tok, max_num_seqs=1)
    ids, params = tok.encode("Once upon a time"), SamplingParams(temperature=0, max_tokens=12)

    class Interrupting(io.StringIO):
        def write(self, text):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream(engine, ids, params, file=Interrupting())
    assert not engine.has_work()
    out = io.StringIO()
    req = stream(engine, ids, params, file=out)
    assert out.getvalue() == req.text == LLM(model, tok).generate([ids], params)[0].outputs[0].text
    assert req.output_ids == greedy_by_full_forwards(model, ids, 12, set(model.config.eos_token_ids))
