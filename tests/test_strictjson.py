"""frozen/cllm/strictjson.py on the host (it is plain Python): it must agree with CPython's own
strict json module on what is valid JSON. The server's use of it is tested in test_stress.py."""
import json
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "frozen"))
from cllm import strictjson  # noqa: E402

CASES = ['{"a":1,,}', '[1,,2]', '{"a" 1}', '{,}', '{"a":1 "b":2}', '[1 2]', '{"a":1,}', '[1,]', '{"a":tru}',
         '{"a":01}', '{"a":1}}', '{"a":-}', '{"a":"\\x"}', '[1]x', '{"a":nul}', '{:1}', '{"a"::1}', '[,1]',
         '{"a":[1,2}', '', ' ', '"\\u12"', '"\\u12zz"', '"a\nb"', '1.', '.5', '1e', '-0', '-0.0e+5', '[]', '{}',
         '[[]]', '{"a":{}}', '"\\ud800"', 'true', 'nul', '{"prompt": "x", "n": [1, 2.5e-3, true, null]}',
         '[' * 500 + ']' * 500, '[' * 500 + ']' * 499, '{"a":1', '"abc', '["a\\"b"]', '[1]  ', '\t[1]\n']


def valid(text):
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def ours(text):
    try:
        strictjson.check(text)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("text", CASES)
def test_agrees_with_cpython(text):
    assert ours(text) == valid(text)


def test_random_mutations_agree():
    rng = random.Random(7)
    seeds = ['{"prompt": "Once upon a time", "n_predict": 16, "stop": ["\\n", "END"], "temperature": 0.5}',
             '[{"role": "user", "content": "hi \\u00e9"}, {"a": [true, false, null, -1.5e3]}]']
    alphabet = '{}[],:"\\ 0123456789-+.eEtrufalsn\n\tx'
    for _ in range(5000):
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
        text = "".join(s)
        assert ours(text) == valid(text), text
