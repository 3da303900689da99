"""MMHead loader on a tiny handwritten corpus: folders, zips, resampling, trimming, broken files."""
import json
import pickle
import zipfile

import numpy as np
import pytest
import soundfile as sf

from mm2face.training.mmhead import CAPTION_KINDS, CorpusError, MMHeadCorpus


def _motion(T, seed):
    r = np.random.default_rng(seed)
    return {"expcodes": r.uniform(0, 1, (T, 50)).astype(np.float32),
            "posecodes": r.uniform(-0.1, 0.1, (T, 6)).astype(np.float32)}


@pytest.fixture()
def tiny(tmp_path):
    root = tmp_path / "mmhead"
    for d in ["audio", "facial_motion"] + [f"text_annotations/{k}" for k in CAPTION_KINDS]:
        (root / d).mkdir(parents=True)
    # A: plain files, 50 frames, 2 s of 16 kHz audio
    pickle.dump(_motion(50, 0), open(root / "facial_motion" / "A.pkl", "wb"))
    sf.write(root / "audio" / "A.wav", 0.1 * np.sin(np.arange(32000) / 10), 16000, subtype="PCM_16")
    # B: motion and audio only inside the zips; audio at 22.05 kHz (resampled), motion 10 frames too long
    with zipfile.ZipFile(root / "facial_motion.zip", "w") as z:
        z.writestr("facial_motion/B.pkl", pickle.dumps(_motion(60, 1)))
    sf.write(root / "b.wav", 0.1 * np.sin(np.arange(44100) / 10), 22050, subtype="PCM_16")
    with zipfile.ZipFile(root / "audio.zip", "w") as z:
        z.write(root / "b.wav", "audio/B.wav")
    (root / "b.wav").unlink()
    # C: missing motion; D: malformed pickle; E: wrong keys
    sf.write(root / "audio" / "C.wav", np.zeros(16000), 16000, subtype="PCM_16")
    sf.write(root / "audio" / "D.wav", np.zeros(16000), 16000, subtype="PCM_16")
    (root / "facial_motion" / "D.pkl").write_bytes(b"this is not a pickle")
    sf.write(root / "audio" / "E.wav", np.zeros(16000), 16000, subtype="PCM_16")
    pickle.dump({"exp": np.zeros((25, 50))}, open(root / "facial_motion" / "E.pkl", "wb"))
    # T: a t2m clip listed in record-list form
    pickle.dump(_motion(30, 2), open(root / "facial_motion" / "T.pkl", "wb"))
    for k in CAPTION_KINDS:
        (root / "text_annotations" / k / "A.txt").write_text(f"caption {k} of A\n")
    (root / "text_annotations" / "action" / "T.txt").write_text("The person smiles.")
    (root / "talking_subset.json").write_text(json.dumps({"train": ["A", "B", "C", "D"], "val": ["E"], "test": []}))
    (root / "t2m_subset.json").write_text(json.dumps([{"id": "T", "split": "test"}]))
    return root


def test_loads_good_clips_and_reports_bad_files(tiny):
    c = MMHeadCorpus(tiny)
    assert c.errors and "C.pkl" in c.errors[0] and "missing" in c.errors[0]    # names the file
    assert sorted(c.ids()) == ["A", "B", "D", "E", "T"]
    clips = {cl.id: cl for cl in c.clips()}
    assert sorted(clips) == ["A", "B", "T"]                                    # D, E skipped on read
    msgs = "\n".join(c.errors)
    assert "D.pkl" in msgs and "unpickle" in msgs
    assert "E.pkl" in msgs and "expcodes" in msgs
    a = clips["A"]
    assert a.motion.shape == (50, 56) and a.motion.dtype == np.float32
    assert a.audio_16k.shape == (32000,) and a.audio_16k.dtype == np.float32
    assert a.captions == {k: f"caption {k} of A" for k in CAPTION_KINDS}
    assert a.split == "train" and a.subset == "talking" and a.meta == {}
    np.testing.assert_allclose(a.motion[:, :50], _motion(50, 0)["expcodes"])
    np.testing.assert_allclose(a.motion[:, 50:], _motion(50, 0)["posecodes"])


def test_zip_members_resampling_and_trim(tiny):
    b = MMHeadCorpus(tiny).get("B")
    # 2 s at 22.05 kHz -> 32000 samples at 16 kHz -> 50 frames; motion had 60 -> trimmed to 50 with a note
    assert b.motion.shape == (50, 56) and b.audio_16k.shape == (32000,)
    assert "trimmed" in b.meta["notes"][0]
    # resampled sine keeps its amplitude
    assert 0.08 < np.abs(b.audio_16k).max() < 0.12


def test_t2m_record_list_and_filters(tiny):
    c = MMHeadCorpus(tiny, subsets=("t2m",))
    t = c[0]
    assert t.id == "T" and t.split == "test" and t.audio_16k is None and t.captions == {"action": "The person smiles."}
    assert MMHeadCorpus(tiny, splits=("val",)).ids() == ["E"]
    assert MMHeadCorpus(tiny).ids(split="train", subset="talking") == ["A", "B", "D"]
    with pytest.raises(KeyError):
        c.get("A")


def test_strict_raises_with_file_name(tiny):
    with pytest.raises(CorpusError, match="C.pkl"):
        MMHeadCorpus(tiny, strict=True)
    (tiny / "talking_subset.json").write_text(json.dumps({"train": ["A", "D"]}))
    c = MMHeadCorpus(tiny, strict=True)
    with pytest.raises(CorpusError, match="D.pkl"):
        list(c.clips())


def test_not_a_corpus(tmp_path):
    with pytest.raises(CorpusError, match="talking_subset.json"):
        MMHeadCorpus(tmp_path)


def test_subset_lists_the_first_clips_of_a_split_and_links_the_rest(tiny, tmp_path):
    from mm2face.training.data_cli import main
    (tiny / "talking_subset.json").write_text(json.dumps({"train": ["A", "B"], "val": ["C", "E"], "test": ["D"]}))
    out = tmp_path / "sub"
    assert main(["subset", "--in", str(tiny), "--out", str(out), "--split", "train", "--as", "test",
                 "--talking", "1", "--t2m", "0"]) == 0
    assert (out / "audio").is_symlink() and (out / "audio.zip").is_symlink()     # nothing copied
    talk = json.loads((out / "talking_subset.json").read_text())
    assert talk == {"train": ["B"], "val": ["C", "E"], "test": ["A"]}           # A moved to test, others kept
    assert json.loads((out / "t2m_subset.json").read_text())["test"] == []
    c = MMHeadCorpus(out)
    assert c.ids("test") == ["A"] and c.get("A").audio_16k.shape == (32000,)
    assert "B" in c.ids("train")                                                 # read through the zip link
    with pytest.raises(CorpusError, match="not empty"):
        main(["subset", "--in", str(tiny), "--out", str(out)])
    with pytest.raises(CorpusError, match="only 1 t2m clips, 5 asked"):
        main(["subset", "--in", str(tiny), "--out", str(tmp_path / "s2"), "--t2m", "5", "--talking", "0"])


def test_movement_captions_can_be_kept_off_emotional_clips():
    from mm2face.training.dataset import SimpleClip, clip_texts, names_emotion
    caps = {"emotion": "The person first looks calm, then becomes startled.",
            "action": "The person turns the head to the left.",
            "detail_head_pose": "The head turns left, then comes back.",
            "detail_expression": "The eyes widen."}
    sad = SimpleClip("a", np.zeros((4, 56), np.float32), captions=caps)
    calm = SimpleClip("b", np.zeros((4, 56), np.float32), captions={**caps, "emotion": "The person stays calm."})
    assert names_emotion(caps["emotion"]) and not names_emotion("The person stays calm and relaxed.")
    old, new = clip_texts(sad), clip_texts(sad, movements_alone=False)
    assert caps["action"] in old and caps["detail_head_pose"] in old               # every kind alone by default
    assert caps["action"] not in new and caps["detail_head_pose"] not in new       # never alone on an emotional clip
    assert f"{caps['emotion']} {caps['detail_head_pose']}" in new and f"{caps['emotion']} {caps['action']}" in new
    assert caps["detail_expression"] in new and caps["emotion"] in new             # the face's own kinds stay
    assert clip_texts(calm, movements_alone=False) == clip_texts(calm)             # a calm clip keeps them all
    frowning = SimpleClip("c", np.zeros((4, 56), np.float32), captions={**caps, "action": "The person frowns."})
    assert "The person frowns." in clip_texts(frowning, movements_alone=False)     # names an emotion itself
