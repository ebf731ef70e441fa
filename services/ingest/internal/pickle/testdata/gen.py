# Writes the pickle test vectors: python3 gen.py (from this directory).
# Each vector is written with Python's own pickler (protocols 0-5) plus one
# stream in the exact opcode shapes Python 2's cPickle writes for str
# (SHORT_BINSTRING / BINSTRING), checked by loading it back here.
import json, pickle, pickletools

tokens = ["the", "man", "in", "red"]
refs = [
    {"sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_16.jpg", "ann_id": 1719310,
     "ref_id": 0, "image_id": 581857, "split": "testB", "category_id": 1,
     "sentences": [{"tokens": tokens, "raw": "The man in red!", "sent_id": 0, "sent": "the man in red"},
                   {"tokens": ["café", "☕"], "raw": "Café ☕", "sent_id": 1, "sent": "café ☕"}]},
    {"sent_ids": [2], "file_name": "COCO_train2014_000000000042_7.jpg", "ann_id": 7,
     "ref_id": 1, "image_id": 42, "split": "train", "category_id": 90,
     "sentences": [{"tokens": tokens, "raw": "back\\slash \"quoted\"\n", "sent_id": 2, "sent": "x"}]},
]
extra = {"big": 2**80, "neg": -5, "negbig": -(2**70), "f": 1.5, "none": None, "t": True, "fa": False,
         "tup": (1, "a"), "i32": -2**31, "u16": 65535}
value = {"refs": refs, "extra": extra}

def jsonable(v):
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**63:
        return str(v)
    return v

json.dump(jsonable(value), open("value.json", "w"), ensure_ascii=False, indent=1, sort_keys=True)
for proto in range(6):
    open("value_p%d.pickle" % proto, "wb").write(pickle.dumps(value, protocol=proto))

# Python 2 style (cPickle, protocol 2, str values): a hand-assembled stream.
def s(x):
    b = x.encode()
    return b"U" + bytes([len(b)]) + b
py2 = (b"\x80\x02]q\x00(}q\x01(" + s("ref_id") + b"K\x00" + s("split") + s("val") +
       s("sentences") + b"]q\x02}q\x03(" + s("sent") + s("left dog") + s("raw") +
       b"T\x08\x00\x00\x00Left dog" + b"uaU\x06ann_idJ\x15\xcd[\x07u" +
       b"h\x01e.")
v = pickle.loads(py2, encoding="latin1")
assert v[0]["ann_id"] == 123456789 and v[0] is v[1], v
open("py2_p2.pickle", "wb").write(py2)
# Python 2 protocol 0 (the default of pickle.dump): text opcodes.
py2_p0 = (b"(lp0\n(dp1\nS'ref_id'\np2\nI3\nsS'sent'\np3\nS'it\\'s \\xe2\\x98\\x95'\np4\n"
          b"sS'big'\np5\nL12345678901234567890L\nsS'u'\np6\nVcaf\xe9 \\u2615\np7\nsa.")
v = pickle.loads(py2_p0, encoding="bytes")
assert v[0][b"sent"] == "it's ☕".encode(), v
open("py2_p0.pickle", "wb").write(py2_p0)
