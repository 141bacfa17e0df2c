"""JSON as RFC 8259 has it, checked before MicroPython's json.loads, which reads commas and colons
as whitespace and takes a truncated document or a mismatched bracket without complaint."""

WS = " \t\n\r"
VALUE, KEY, AFTER = 0, 1, 2
LITERALS = ("true", "false", "null")


def fail(what, i):
    raise ValueError("{} at character {}".format(what, i))


def string_end(s, i):
    """Where the string starting at s[i] == '"' ends (one past its closing quote)."""
    j = i + 1
    while True:
        q = s.find('"', j)
        if q < 0:
            fail("unterminated string", i)
        b = s.find("\\", j, q)
        end = b if b >= 0 else q
        if end > j and min(s[j:end]) < " ":
            fail("unescaped control character in a string", j)
        if b < 0:
            return q + 1
        e = s[b + 1:b + 2]
        if e == "u":
            if len(s) < b + 6 or any(c not in "0123456789abcdefABCDEF" for c in s[b + 2:b + 6]):
                fail("bad \\u escape", b)
            j = b + 6
        elif e and e in '"\\/bfnrt':
            j = b + 2
        else:
            fail("bad escape", b)


def digits_end(s, j):
    k = j
    while k < len(s) and "0" <= s[k] <= "9":
        k += 1
    if k == j:
        fail("digit expected", j)
    return k


def number_end(s, i):
    j = i + 1 if s[i] == "-" else i
    j = j + 1 if s[j:j + 1] == "0" else digits_end(s, j)
    if s[j:j + 1] == ".":
        j = digits_end(s, j + 1)
    if s[j:j + 1] in ("e", "E"):
        j += 1
        if s[j:j + 1] in ("+", "-"):
            j += 1
        j = digits_end(s, j)
    return j


def check(s):
    """Raise ValueError (with the position) unless s is one whole, valid JSON value. Iterative:
    any depth of nesting, no recursion."""
    n, i, stack, want, opened = len(s), 0, [], VALUE, False
    while True:
        while i < n and s[i] in WS:
            i += 1
        if i == n:
            break
        c = s[i]
        if want == AFTER:
            if not stack:
                fail("unexpected data after the document", i)
            if c == ",":
                want, i = KEY if stack[-1] == "{" else VALUE, i + 1
            elif c == ("}" if stack[-1] == "{" else "]"):
                stack.pop()
                i += 1
            else:
                fail("',' or the closing bracket expected", i)
            continue
        if opened and c == ("}" if stack[-1] == "{" else "]"):     # an empty object or array
            stack.pop()
            want, opened, i = AFTER, False, i + 1
            continue
        opened = False
        if want == KEY:
            if c != '"':
                fail("a key (a string) expected", i)
            i = string_end(s, i)
            while i < n and s[i] in WS:
                i += 1
            if s[i:i + 1] != ":":
                fail("':' expected", i)
            want, i = VALUE, i + 1
            continue
        if c in "{[":
            stack.append(c)
            want, opened, i = KEY if c == "{" else VALUE, True, i + 1
            continue
        if c == '"':
            i = string_end(s, i)
        elif c == "-" or "0" <= c <= "9":
            i = number_end(s, i)
        else:
            for word in LITERALS:
                if s.startswith(word, i):
                    i += len(word)
                    break
            else:
                fail("a value expected", i)
        want = AFTER
    if stack or want != AFTER:
        fail("unexpected end of the document", n)
