"""llm.json_check, in the guest: llama-server's JSON reader (nlohmann::json) decides what a request
body may be. It must agree with CPython's strict json module on what is valid JSON, except where
nlohmann is stricter (a lone UTF-16 surrogate escape), refuse nesting past its limit early, and cost
time linear in the length of the document. The server's use of it is tested in test_stress.py."""
import json
import random

import pytest

from qemu import Guest

CASES = ['{"a":1,,}', '[1,,2]', '{"a" 1}', '{,}', '{"a":1 "b":2}', '[1 2]', '{"a":1,}', '[1,]', '{"a":tru}',
         '{"a":01}', '{"a":1}}', '{"a":-}', '{"a":"\\x"}', '[1]x', '{"a":nul}', '{:1}', '{"a"::1}', '[,1]',
         '{"a":[1,2}', '', ' ', '"\\u12"', '"\\u12zz"', '"a\nb"', '1.', '.5', '1e', '-0', '-0.0e+5', '[]', '{}',
         '[[]]', '{"a":{}}', 'true', 'nul', '{"prompt": "x", "n": [1, 2.5e-3, true, null]}',
         '[' * 256 + ']' * 256, '[' * 250 + ']' * 249, '{"a":1', '"abc', '["a\\"b"]', '[1]  ', '\t[1]\n',
         '"\\ud83d\\ude00"', '"\u00e9\u4e2d"']
STRICTER = ['"\\ud800"', '"\\udc00x"']     # CPython takes lone surrogates; nlohmann (and llama-server) do not


def valid(text):
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def mutations(n):
    rng = random.Random(7)
    seeds = ['{"prompt": "Once upon a time", "n_predict": 16, "stop": ["\\n", "END"], "temperature": 0.5}',
             '[{"role": "user", "content": "hi \\u00e9"}, {"a": [true, false, null, -1.5e3]}]']
    alphabet = '{}[],:"\\ 0123456789-+.eEtrufalsn\n\tx'
    for _ in range(n):
        s = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(s) + 1)
            op = rng.random()
            if op < 0.4 and s:
                del s[min(k, len(s) - 1)]
            elif op < 0.8:
                s.insert(k, rng.choice(alphabet))
            else:
                s = s[:k]
        yield "".join(s)


@pytest.fixture(scope="module")
def g():
    with Guest(mem="256M") as guest:
        guest.wait_prompt()
        guest.raw_exec("import llm\n"
                       "def ok(t):\n"
                       "    try:\n"
                       "        llm.json_check(t)\n"
                       "        return 1\n"
                       "    except ValueError:\n"
                       "        return 0\n")
        yield guest


def verdicts(g, texts):
    """What llm.json_check says of each text, one raw-REPL round trip for them all."""
    out, err = g.raw_exec("print(''.join(str(ok(t)) for t in {!r}))".format(list(texts)), timeout=120)
    assert not err, err.decode()
    return [c == "1" for c in out.decode().strip()]


def test_cases_agree_with_cpython(g):
    assert verdicts(g, CASES) == [valid(t) for t in CASES]


def test_random_mutations_agree_with_cpython(g):
    texts = [t for t in mutations(3000) if t not in STRICTER]
    got = verdicts(g, texts)
    assert [t for t, v in zip(texts, got) if v != valid(t)] == []


def test_lone_surrogates_are_refused_as_llama_server_does(g):
    assert all(valid(t) for t in STRICTER)
    assert verdicts(g, STRICTER) == [False] * len(STRICTER)


def test_depth_limit_and_message(g):
    out, err = g.raw_exec("try:\n    llm.json_check(b'[' * 257 + b']' * 257)\nexcept ValueError as e:\n    print(e)\n"
                          "llm.json_check(b'[' * 300 + b']' * 300, 300)\nprint('deep ok')\n"
                          "try:\n    llm.json_check(b'{\"a\":1,,}')\nexcept ValueError as e:\n    print(e)\n")
    assert not err, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "nested deeper than 256 levels"
    assert lines[1] == "deep ok"
    assert lines[2].startswith("parse error at line 1, column 8: syntax error while parsing object key")


def test_cost_is_linear_and_small(g):
    """Per KiB, in the guest under TCG, for documents of the shapes a slower checker chokes on: long runs
    of escapes, huge arrays, many strings, deep nesting, many objects."""
    out, err = g.raw_exec(r'''
import json, time
docs = [b'"' + b"\\u0041" * 30000 + b'"', b'[' + b",".join(b"1" for _ in range(40000)) + b']',
        json.dumps(["ab"] * 30000).encode(), b"[" * 100000 + b"]" * 100000,
        json.dumps([{"role": "user", "content": "hi there"}] * 4000).encode()]
worst = 0
for d in docs:
    t = time.ticks_us()
    ok(d)
    worst = max(worst, time.ticks_diff(time.ticks_us(), t) / (len(d) / 1024))
print(int(worst))
''', timeout=300)
    assert not err, err.decode()
    assert int(out.decode()) < 3000        # microseconds per KiB: "a few ms per KiB" at most
