"""The verification page in a real browser (headless Chromium): it agrees with ``ledger verify``
step by step on every bundle of the shared corpus and on further mutations, makes no network
request (from disk or served by ingest), and is usable with the keyboard and a screen reader.

Two independent verifiers that share no code can only agree on a forgery if the checks
themselves are wrong: ``shared.bundle.verify_bundle`` is the oracle here, and the page is
the oracle of ``verify_bundle``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from shared.bundle import STEPS, BundleVerificationError, verify_bundle
from shared.errors import VerificationError
from shared.signatures import load_public_key_der
from shared.verify import RekorReceipt
from tests.support import malformed_bundles
from tests.support.browser import (
    chromium,
    file_url,
    network_log,
    page_verify,
    requests_made,
    serve_in_thread,
)
from tests.unit.test_verify_page import _app

pytestmark = [pytest.mark.unit, pytest.mark.browser]

CORPUS = malformed_bundles.CORPUS_DIR
MANIFEST: dict[str, Any] = json.loads((CORPUS / "manifest.json").read_text())
CASES: dict[str, dict[str, Any]] = {c["name"]: c for c in MANIFEST["cases"]}
VALID = (CORPUS / MANIFEST["valid"]).read_bytes()
REKOR_PEM = (CORPUS / MANIFEST["rekor_public_key"]).read_bytes()
ENTRY_PEM = (CORPUS / MANIFEST["entry_public_key"]).read_bytes()
PAYLOAD = (CORPUS / "payload.bin").read_bytes()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        driver.get(file_url())
        yield driver


def python_verdict(bundle: bytes, **pins: Any) -> tuple[list[str], str | None, str]:
    """``ledger verify``'s verdict: the steps passed, the failing step (None) and its reason."""
    try:
        report = verify_bundle(bundle, rekor_public_key_pem=REKOR_PEM, **pins)
    except BundleVerificationError as exc:
        return [p.step for p in exc.passed], exc.step, exc.detail
    return [s.step for s in report.steps], None, ""


def page_verdict(driver: webdriver.Chrome, bundle: bytes, **pins: Any) -> tuple[list[str], str | None, str]:
    result = page_verify(driver, bundle, REKOR_PEM, pins.get("entry_public_key_pem"),
                         pins.get("payload"))
    steps = result["steps"]
    assert [s["step"] for s in steps] == [s for s in STEPS if s in {x["step"] for x in steps}]
    assert result["verified"] == (result["failed"] is None)
    passed = [s["step"] for s in steps if s["status"] == "pass"]
    return passed, result["failed"], steps[-1]["detail"] if result["failed"] else ""


def assert_agree(driver: webdriver.Chrome, bundle: bytes, **pins: Any) -> tuple[str | None, str]:
    py_passed, py_step, py_detail = python_verdict(bundle, **pins)
    js_passed, js_step, js_detail = page_verdict(driver, bundle, **pins)
    assert (js_step, js_passed) == (py_step, py_passed), (py_detail, js_detail)
    if py_step == "receipt":  # the same receipt check failed: "uuid: …", "set: …"
        assert js_detail.split(":")[0] == py_detail.split(":")[0], (py_detail, js_detail)
    return js_step, js_detail


@pytest.mark.parametrize("name", list(CASES))
def test_the_page_refuses_each_corpus_case_at_the_step_ledger_verify_does(browser, name):
    case = CASES[name]
    step, detail = assert_agree(browser, (CORPUS / case["file"]).read_bytes())
    assert step == case["step"]
    if "check" in case:
        assert detail.startswith(f"{case['check']}: "), detail
    assert "could not check this input" not in detail  # the safety net is never reached


def test_the_valid_bundle_passes_every_step_with_both_pins(browser):
    pins = {"entry_public_key_pem": ENTRY_PEM, "payload": PAYLOAD}
    assert assert_agree(browser, VALID, **pins) == (None, "")
    passed, _, _ = page_verdict(browser, VALID, **pins)
    assert passed == list(STEPS)
    result = page_verify(browser, VALID, REKOR_PEM)  # no pins: those two steps say so
    skipped = [s["step"] for s in result["steps"] if s["status"] == "skip"]
    assert result["verified"] and skipped == ["entry_key", "payload"]


def _other_entry_key() -> bytes:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_wrong_pinned_entry_key_or_document_fails_where_ledger_verify_fails(browser):
    assert assert_agree(browser, VALID, entry_public_key_pem=_other_entry_key())[0] == "entry_key"
    assert assert_agree(browser, VALID, payload=PAYLOAD + b" ")[0] == "payload"
    assert assert_agree(browser, VALID, entry_public_key_pem=REKOR_PEM)[0] == "entry_key"


def test_an_anchor_key_pinned_in_the_page_must_be_the_batch_s(browser):
    """ledger verify has no anchor key pin (the page's is an addition: without it, the two
    agree): with the right key the step says it is pinned; with another it fails."""
    anchor_pem = serialization.load_pem_public_key(
        _valid("batch.anchor_public_key").encode()).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    result = page_verify(browser, VALID, REKOR_PEM, anchor_pem=anchor_pem)
    assert result["verified"]
    step = next(s for s in result["steps"] if s["step"] == "anchor_signature")
    assert "verifies with the pinned anchor key" in step["detail"]
    for other in (REKOR_PEM, b"not a key"):
        result = page_verify(browser, VALID, REKOR_PEM, anchor_pem=other)
        assert result["failed"] == "anchor_signature"
        assert "pinned anchor key" in result["steps"][-1]["detail"]


def _edit(path: str, value: Any) -> bytes:
    doc = json.loads(VALID)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[int(last) if isinstance(node, list) else last] = value
    return json.dumps(doc).encode()


def _valid(path: str) -> Any:
    node: Any = json.loads(VALID)
    for p in path.split("."):
        node = node[int(p)] if isinstance(node, list) else node[p]
    return node


#: mutations beyond the corpus, several of which ledger verify accepts: forms that parse to
#: the same value (an upper-case or braced UUID, another time zone, hex with spaces)
MUTATIONS = {
    "entry-id-upper-case": lambda: _edit("entry.entry_id", _valid("entry.entry_id").upper()),
    "batch-id-braced": lambda: _edit("batch.batch_id", "{" + _valid("batch.batch_id") + "}"),
    "batch-id-no-hyphens": lambda: _edit("batch.batch_id", _valid("batch.batch_id").replace("-", "")),
    "submitted-at-other-zone": lambda: _edit("entry.submitted_at", "2026-03-04T06:05:59.891011+01:00"),
    "submitted-at-a-second-off": lambda: _edit("entry.submitted_at", "2026-03-04T05:06:00.891011Z"),
    "submitted-at-unix-seconds": lambda: _edit("entry.submitted_at", "1772600759.891011"),
    "submitted-at-unix-milliseconds": lambda: _edit("entry.submitted_at", "1772600759891.011"),
    "submitted-at-space-and-comma": lambda: _edit("entry.submitted_at", "2026-03-04 05:05:59,891011Z"),
    "submitted-at-nanoseconds": lambda: _edit("entry.submitted_at", "2026-03-04T05:05:59.8910119Z"),
    "submitted-at-not-a-day": lambda: _edit("entry.submitted_at", "2026-02-29T00:00:00Z"),
    "anchored-at-before-1970": lambda: _edit("anchored_at", "1969-12-31T23:59:59.5Z"),
    "anchored-at-year-1": lambda: _edit("anchored_at", "-62135596800"),
    "manifest-created-before-1970": lambda: _edit("batch.manifest", base64.b64encode(
        base64.b64decode(_valid("batch.manifest")).replace(b"2026-03-04", b"1969-12-31")).decode()),
    "audit-path-spaced-hex": lambda: _edit("audit_path.0", " ".join(
        _valid("audit_path.0")[i:i + 2] for i in range(0, 64, 2))),
    "audit-path-upper-case": lambda: _edit("audit_path.0", _valid("audit_path.0").upper()),
    "audit-path-empty": lambda: _edit("audit_path", []),
    "leaf-index-other": lambda: _edit("leaf_index", 3),
    "batch-size-other": lambda: _edit("batch.size", 6),
    "signature-version-plus": lambda: _edit("entry.signature", _valid("entry.signature").replace("v1", "v+1")),
    "signature-version-padded": lambda: _edit("entry.signature", _valid("entry.signature").replace("v1", "v01")),
    "meta-float-for-int": lambda: _edit("entry.meta.n", 2.0),
    "meta-true-for-one": lambda: _edit("entry.meta.flag", 1),
    "receipt-root-upper-case": lambda: _edit("receipt.root_hash", _valid("receipt.root_hash").upper()),
    "receipt-log-id-upper-case": lambda: _edit("receipt.log_id", _valid("receipt.log_id").upper()),
    "receipt-tree-index-other": lambda: _edit("receipt.tree_index", _valid("receipt.tree_index") + 1),
    "receipt-hashes-dropped": lambda: _edit("receipt.hashes", []),
    "receipt-checkpoint-no-newline": lambda: _edit("receipt.checkpoint", _valid("receipt.checkpoint")[:-1]),
    "receipt-integrated-time-changed": lambda: _edit("receipt.integrated_time", _valid("receipt.integrated_time") + 1),
    "anchor-signature-of-other-batch": lambda: _edit("batch.anchor_signature", base64.b64encode(
        base64.b64decode(_valid("batch.anchor_signature"))[:-1] + b"\x00").decode()),
    "anchored-at-naive": lambda: _edit("anchored_at", "2026-03-04T05:06:10"),
    "manifest-padded": lambda: _edit("batch.manifest", _valid("batch.manifest") + "=="),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_the_page_and_ledger_verify_agree_beyond_the_corpus(browser, name):
    assert_agree(browser, MUTATIONS[name]())


def test_a_receipt_form_the_page_does_not_know_fails_the_receipt_step_in_words(browser):
    v2 = _edit("receipt", {"api": "v2", "entry": {"kind": "hashedrekord"},
                           "timestamp": "MIIB", "checkpoint": "log\n1\nAA==\n\n"})
    result = page_verify(browser, v2, REKOR_PEM)
    assert result["failed"] == "receipt"
    assert [s["step"] for s in result["steps"] if s["status"] == "pass"] == [
        s for s in STEPS[: STEPS.index("receipt")] if s != "entry_key"]
    detail = result["steps"][-1]["detail"]
    assert "Rekor v1 receipts only" in detail and '"v2"' in detail and "not verified" in detail


# --- the page as people use it -------------------------------------------------------------------


def _summary(driver: webdriver.Chrome, starts: str) -> str:
    summary = driver.find_element(By.ID, "summary")
    WebDriverWait(driver, 60).until(lambda d: summary.text.startswith(starts))
    return summary.text


def _files(tmp_path: Path, bundle: bytes) -> dict[str, Path]:
    paths = {"bundle": tmp_path / "bundle.json", "rekor": tmp_path / "rekor.pem",
             "payload": tmp_path / "payload.bin"}
    paths["bundle"].write_bytes(bundle)
    paths["rekor"].write_bytes(REKOR_PEM)
    paths["payload"].write_bytes(PAYLOAD)
    return paths


def _verify_with_the_keyboard(driver: webdriver.Chrome, files: dict[str, Path]) -> None:
    """Fill the form as a keyboard user does: Tab from control to control, Enter to verify."""
    driver.find_element(By.ID, "bundle-file").send_keys(str(files["bundle"]))
    driver.find_element(By.ID, "rekor-key-file").send_keys(str(files["rekor"]))
    driver.find_element(By.ID, "payload-file").send_keys(str(files["payload"]))
    WebDriverWait(driver, 10).until(
        lambda d: str(d.find_element(By.ID, "rekor-key").get_property("value")).startswith(
            "-----BEGIN"))
    driver.execute_script("document.activeElement.blur(); document.body.focus();")
    order = []
    for _ in range(10):
        webdriver.ActionChains(driver).send_keys(Keys.TAB).perform()
        order.append(driver.switch_to.active_element.get_attribute("id"))
    assert order == ["bundle-file", "bundle-text", "rekor-key", "rekor-key-file", "entry-key",
                     "entry-key-file", "anchor-key", "anchor-key-file", "payload-file", "verify"]
    driver.switch_to.active_element.send_keys(Keys.ENTER)


def test_from_disk_the_page_verifies_with_the_keyboard_and_requests_nothing(tmp_path):
    with chromium() as driver:
        driver.get(file_url())
        _verify_with_the_keyboard(driver, _files(tmp_path, VALID))
        text = _summary(driver, "VERIFIED")
        assert text == f"VERIFIED: entry {json.loads(VALID)['entry']['entry_id']}. Every step passed."
        items = driver.find_elements(By.CSS_SELECTOR, "#steps li")
        assert [i.get_attribute("data-step") for i in items] == list(STEPS)
        assert [i.text.split()[:2] for i in items] == [
            ["\u2013", "SKIPPED"] if i.get_attribute("data-step") == "entry_key" else ["✓", "PASSED"]
            for i in items]
        # the result is announced, and the keyboard user is taken to it
        summary = driver.find_element(By.ID, "summary")
        assert (summary.get_attribute("role"), summary.get_attribute("aria-live")) == ("status", "polite")
        assert driver.switch_to.active_element == summary
        assert requests_made(driver) == [file_url()]


def test_served_by_ingest_a_failure_is_named_in_words_and_nothing_is_requested(tmp_path):
    case = CASES["uuid-other-leaf"]
    with serve_in_thread(_app(tmp_path)) as url, chromium() as driver:
        driver.get(url + "/verify")
        _verify_with_the_keyboard(driver, _files(tmp_path, (CORPUS / case["file"]).read_bytes()))
        text = _summary(driver, "NOT VERIFIED")
        assert text.startswith("NOT VERIFIED: the receipt step failed. uuid: ")
        failed = driver.find_element(By.CSS_SELECTOR, "#steps li[data-status=fail]")
        assert failed.text.startswith("✗ FAILED receipt: uuid: ")
        assert requests_made(driver) == [url + "/verify"]


DROP = """
const [id, name, b64] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], name));
document.getElementById(id).dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
"""


def test_a_dropped_bundle_and_document_are_verified_and_bundle_text_is_never_markup():
    hostile = _edit("entry.meta", {"<img src=x onerror=alert(1)>": 1})
    hostile = hostile.replace(b'"leaf_index"', b'"<b>x</b>": 1, "leaf_index"', 1)
    with chromium() as driver:
        driver.get(file_url())
        labelled = driver.execute_script(
            "return [...document.querySelectorAll('input, textarea')]"
            ".map((e) => e.labels.length > 0 && e.labels[0].textContent.trim().length > 0)")
        assert labelled and all(labelled)  # every control has a visible label
        driver.find_element(By.ID, "rekor-key").send_keys(REKOR_PEM.decode())
        for name, data in (("bundle", VALID), ("payload", PAYLOAD)):
            driver.execute_script(DROP, f"{name}-drop", f"{name}.bin", base64.b64encode(data).decode())
        driver.find_element(By.ID, "verify").click()
        assert _summary(driver, "VERIFIED").startswith("VERIFIED: entry ")
        assert driver.find_element(By.CSS_SELECTOR, "#steps li[data-step=payload]").text.startswith(
            "\u2713 PASSED payload")
        # a bundle with markup in a member name, pasted: shown as text, never as markup
        driver.refresh()
        driver.find_element(By.ID, "rekor-key").send_keys(REKOR_PEM.decode())
        driver.execute_script("arguments[0].value = arguments[1]",
                              driver.find_element(By.ID, "bundle-text"), hostile.decode())
        driver.find_element(By.ID, "verify").click()
        text = _summary(driver, "NOT VERIFIED")
        assert text.startswith("NOT VERIFIED: the bundle step failed.") and "<b>x</b>" in text
        assert driver.execute_script("return document.querySelectorAll('main img, main b').length") == 0


BLOCKED_FETCH = """
const done = arguments[arguments.length - 1];
const seen = [];
document.addEventListener("securitypolicyviolation", (e) => seen.push(e.effectiveDirective));
const url = arguments[0];
const img = new Image(); img.src = url + "/pixel.png"; document.body.append(img);
fetch(url + "/health").then(() => done({fetched: true, seen}),
  () => setTimeout(() => done({fetched: false, seen}), 200));
"""


@pytest.mark.parametrize("where", ["disk", "ingest"])
def test_the_policy_refuses_a_request_even_if_the_page_tried(tmp_path, where):
    with serve_in_thread(_app(tmp_path)) as url, chromium() as driver:
        page = file_url() if where == "disk" else url + "/verify"
        driver.get(page)
        result = driver.execute_async_script(BLOCKED_FETCH, url)
        assert result["fetched"] is False
        assert {"connect-src", "img-src"} <= set(result["seen"]), result
        log = network_log(driver)
        assert [u for u, what in log.items() if what == "sent"] == [page], log
        assert log.get(url + "/pixel.png", "blocked:csp") == "blocked:csp", log


# --- generated mutations ---------------------------------------------------------------------------


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        items = [(k, v) for k, v in node.items()]
    elif isinstance(node, list):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return [prefix]
    paths = [prefix] if prefix else []
    for key, value in items:
        paths += _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    return paths


PATHS = _leaf_paths(json.loads(VALID))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5)


KEYS = malformed_bundles.build()


def _mutated_json(draw: st.DrawFn, text: str) -> str:
    """``text`` (JSON) with one character replaced, or one of its values replaced."""
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text) - 1))
        return text[:at] + draw(st.characters(codec="utf-8")) + text[at + 1:]
    doc = json.loads(text)
    key = draw(st.sampled_from(sorted(doc)))
    doc[key] = draw(JSON_VALUES)
    return json.dumps(doc, separators=(",", ":"), sort_keys=draw(st.booleans()))


@st.composite
def resigned_statements(draw: st.DrawFn) -> bytes:
    """A statement changed and really signed with the entry key: it passes entry_signature,
    and statement_fields must decide."""
    doc = json.loads(VALID)
    statement = _mutated_json(draw, base64.b64decode(doc["entry"]["statement"]).decode()).encode()
    doc["entry"]["statement"] = base64.b64encode(statement).decode()
    signature = base64.b64encode(KEYS.entry_key.sign(statement)).decode()
    doc["entry"]["signature"] = f"vault:v1:{signature}"
    return json.dumps(doc).encode()


@st.composite
def changed_manifests(draw: st.DrawFn) -> bytes:
    manifest = base64.b64decode(_valid("batch.manifest")).decode()
    return _edit("batch.manifest", base64.b64encode(_mutated_json(draw, manifest).encode()).decode())


def _anchor_key_forms() -> list[str]:
    key = KEYS.anchor_key.public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return [base64.b64encode(form).decode() for form in (pem, der, pem.replace(b"\n", b"\r\n"),
                                                          pem + b"trailing", REKOR_PEM, b"")]


@st.composite
def logged_bodies(draw: st.DrawFn) -> bytes:
    """The receipt of another body, really logged (a valid SET, proof and checkpoint): the
    body's hashedrekord is changed in one place, so that only the receipt's body check can
    refuse it."""
    doc = json.loads(VALID)
    body: Any = json.loads(base64.b64decode(doc["receipt"]["body"]))
    path = draw(st.sampled_from(_leaf_paths(body)))
    *parents, last = path.split(".")
    node = body
    for p in parents:
        node = node[p]
    old = node[last]
    choices: list[Any] = [None, "drop"]
    if isinstance(old, str):
        choices += [old.upper(), old[1:], old + "=", " " + old]
    if last == "content" and parents[-1] == "publicKey":
        choices += _anchor_key_forms()
    value = draw(st.sampled_from(choices) | JSON_VALUES)
    if value == "drop":
        del node[last]
    else:
        node[last] = value
    receipt = RekorReceipt.from_v1_response(KEYS.log.add(body, filler=draw(st.integers(0, 3))))
    doc["receipt"] = {**receipt.model_dump(exclude={"inclusion_hashes"}),
                      "hashes": list(receipt.inclusion_hashes)}
    return json.dumps(doc).encode()


@st.composite
def mutated_bundles(draw: st.DrawFn) -> bytes:
    """The valid bundle with one value replaced (by a near miss or anything JSON), or one
    character of its text replaced."""
    text = VALID.decode()
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text) - 1))
        char: str = draw(st.characters(codec="utf-8"))
        mutated: bytes = (text[:at] + char + text[at + 1:]).encode()
        return mutated
    path = draw(st.sampled_from(PATHS))
    old = _valid(path)
    near = [old + 1, old - 1, -old, str(old)] if isinstance(old, int) else (
        [old.upper(), old[1:], old + "=", " " + old, old.replace("a", "b", 1)]
        if isinstance(old, str) else [])
    value = draw(st.sampled_from(near) | JSON_VALUES if near else JSON_VALUES)
    return _edit(path, value)


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(bundle=mutated_bundles() | resigned_statements() | changed_manifests() | logged_bodies())
def test_generated_mutations_get_the_same_verdict_from_both(browser, bundle):
    assert_agree(browser, bundle)


#: forms of a PEM public key, some of which the Python verifier reads (and so must the page)
PEM_FORMS: dict[str, Callable[[str, str], str]] = {
    "as is": lambda k, o: k,
    "trailing text": lambda k, o: k + "junk",
    "another block after": lambda k, o: k + o,
    "another block first": lambda k, o: o + k,
    "leading whitespace": lambda k, o: " \n" + k,
    "CRLF": lambda k, o: k.replace("\n", "\r\n"),
    "base64 split and spaced": lambda k, o: k.replace("\nMC", "\nM C\t"),
    "an RFC 1421 header": lambda k, o: k.replace("-----\n", "-----\nProc-Type: 4,X\n\n", 1),
    "text before the base64": lambda k, o: k.replace("-----\n", "-----\njunk\n", 1),
    "END label differs": lambda k, o: k.replace("END PUBLIC", "END PRIVATE"),
    "another label": lambda k, o: k.replace("PUBLIC KEY", "CERTIFICATE"),
    "padding dropped": lambda k, o: k.replace("=\n", "\n"),
    "lower-case BEGIN": lambda k, o: k.replace("BEGIN", "begin"),
    "not a key": lambda k, o: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
}


@pytest.mark.parametrize("form", list(PEM_FORMS))
def test_the_page_reads_a_public_key_as_the_python_verifier_does(browser, form):
    for key, other in ((ENTRY_PEM.decode(), REKOR_PEM.decode()), (REKOR_PEM.decode(), ENTRY_PEM.decode())):
        text = PEM_FORMS[form](key, other)
        try:
            expected: str | None = load_public_key_der(text).hex()
        except VerificationError:
            expected = None
        page = browser.execute_async_script(
            "window.ledgerVerify.publicKeyDer(arguments[0]).then(arguments[1])", text)
        assert page == expected
