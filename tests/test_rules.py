"""The shipped secret rules: each format is caught, look-alikes are not, scans stay linear."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditaspect.redaction import Redactor
from auditaspect.rules import Rule, RuleSet, default_rules, entropy, is_placeholder, load_rules
from secret_samples import SPECS, make

R = Redactor()
RULES = default_rules()
SENTENCE = "deploy failed with {} at step 3"


def test_every_shipped_rule_has_generated_samples():
    """A rule cannot be added without samples in this suite (and vice versa)."""
    assert sorted(rule.id for rule in RULES.rules) == sorted(rule for rule, _ in SPECS)


def test_at_least_eighty_provider_formats():
    """The rule file covers at least 80 provider formats besides the keyword rules."""
    assert len([rule for rule in RULES.rules if not rule.generic]) >= 80


@pytest.mark.parametrize(("rule_id", "template"), SPECS, ids=[rule for rule, _ in SPECS])
def test_rule_catches_its_format(rule_id, template):
    """Random bodies of each format are masked and labelled with the rule, bare and in text."""
    rng = random.Random(rule_id)
    for _ in range(5):
        sample, secret = make(template, rng)
        for text in (sample, SENTENCE.format(sample)):
            out = R.redact_text(text)
            assert secret not in out, (rule_id, text, out)
            assert f"[REDACTED:{rule_id}]" in out, (text, out)


@pytest.mark.parametrize(
    "text",
    [
        "token: null",
        "secret: false",
        "token=undefined",
        "password: ********",
        "password: ${DB_PASSWORD}",
        "api_key = '<redacted>'",
        "password=[REDACTED]",
        "PWD=/srv/app",
        "pwd: /workspace/project",
        "Authorization: none provided",
        "Missing bearer credentials",
        "Use a bearer token or a signed URL to download exports.",
        "xoxo_photos.png",
        "password:\nnext line",
        "User changed their password.",
        "token_type: bearer",
        "token_count = 12345678",
        "tokenizer = 'bert-base-uncased'",
        "passport_number: X12345",
        "author: Jane Austen",
        "password = settings.DB_PASSWORD",
        "secret = os.environ['APP_SECRET']",
        "public_key = AAAAC3NzaC1lZDI1NTE5AAAAIB7b3f2c1e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4",
        "94a2de50-ff54-4939-a9d6-bd800bc49874",
        "67f7084670848ab97e0adc923d3d3e546c1d4347",
        "1b424b5b64c096e73b147ef860fd8a291a74ec061743381acaa31c2b183278da",
        "2024-01-29T19:29:10Z",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "https://example.com/a/b?page=2&sort=name",
        "http://127.0.0.1:5432/",
        "team.refund35@acme.io",
        "task-42 is done; disk full",
        'if token == "abcdef123":',
        'if token != "abcdef123":',
        "var t string = 'x'",
    ],
)
def test_look_alikes_and_placeholders_are_left_alone(text):
    """Placeholders, metadata names, code, paths, ids and prose come out unchanged."""
    assert text == R.redact_text(text)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("db_password=hunter2x", "hunter2x"),
        ("DB_PASSWORD=hunter2x", "hunter2x"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzKEY", "wJalrXUtnFEMI"),
        ("client_secret=abcdef123456", "abcdef123456"),
        ("access_token=ya29abc123x", "ya29abc123x"),
        ("refresh_token=zzz123abcq", "zzz123abcq"),
        ('githubToken = "abcdefgh12345"', "abcdefgh12345"),
        ("{'password': 'x'}", "'x'"),
        ("{'api_key': 'k2f9Qz81mW'}", "k2f9Qz81mW"),
        ('{"password": "p@ss word"}', "p@ss word"),
        ('password = "correct horse battery staple"', "horse battery"),
        ("postgres://u:p@ss/w@rd@host/db", "w@rd"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        ("Authorization: Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", "9944b09199c6"),
        (
            'Authorization: Digest username="bob", response="6629fae49393a05397450978507c4ef1"',
            "6629fae4",
        ),
        ("Cookie: session=abc123def; theme=dark", "abc123def"),
        ("Set-Cookie: sid=xyz123abc; HttpOnly", "xyz123abc"),
        ("X-Api-Key: 3f7a9c2e1b8d4f6a", "3f7a9c2e1b8d4f6a"),
        ("curl -u admin:s3cretpw https://x", "s3cretpw"),
        ("--password s3cretpw", "s3cretpw"),
        ("stripeSecretKey: 'abc123def456'", "abc123def456"),
        ('var acmeToken string = "g89iqpevzs7wz9m4"', "g89iqpevzs7wz9m4"),
        ('token: str = "abc123xyz"', "abc123xyz"),
        ('acme_TOKEN :::= "g89iqpevzs7wz9m4"', "g89iqpevzs7wz9m4"),
        ('System.setProperty("ACME_TOKEN", "g89iqpevzs7wz9m4")', "g89iqpevzs7wz9m4"),
        ("ACMEToken = s9qtkwodvscvjuza4m49", "s9qtkwodvscvjuza4m49"),
        ("creds = KzoLNQhq3YdAZJZxwL7zUd", "KzoLNQhq3YdAZJZxwL7zUd"),
        ("fastly_token: r_q8v0pqou3uofbcd=qfa2=q", "r_q8v0pqou3uofbcd=qfa2=q"),
        ("curl --user kevin:'pRf7vG2h1L8nQkW9' -iX PATCH", "pRf7vG2h1L8nQkW9"),
        ('curl -u ":d2LkV78zLx!t" https://localhost:9200', "d2LkV78zLx!t"),
        ("curl --cacert ca.crt -u elastic:P@ssw0rd$1 https://x", "P@ssw0rd$1"),
    ],
)
def test_secret_shapes_in_text_are_masked(text, secret):
    """The shapes secrets take in text lose their value, keyword found inside longer names."""
    out = R.redact_text(text)
    assert secret not in out, out
    assert "[REDACTED:" in out


def test_scheme_is_kept_and_credential_masked():
    """Authorization: Basic <credential> keeps the scheme, masks the credential."""
    assert "Authorization: Basic [REDACTED:authorization-header]" == R.redact_text(
        "Authorization: Basic dXNlcjpwYXNzd29yZA=="
    )


def test_plain_mask_stays_available():
    """finding_mask=None writes the plain mask for findings too."""
    plain = Redactor(finding_mask=None)
    assert "token ghp_… [REDACTED]" == plain.redact_text("token ghp_… " + "ghp_" + "a1B2" * 9)


def test_custom_finding_mask_and_bad_template():
    """finding_mask takes {rule}; any other placeholder is refused with a clear message."""
    assert "<<github-pat>>" == Redactor(finding_mask="<<{rule}>>").redact_text("ghp_" + "a1B2" * 9)
    with pytest.raises(ValueError, match="finding_mask"):
        Redactor(finding_mask="{other}")


def test_secret_used_as_a_key_is_masked():
    """A secret that is a dict key is masked like a value; two masked keys do not collide."""
    token_a, token_b = "ghp_" + "a1B2" * 9, "ghp_" + "c3D4" * 9
    out = R.redact({token_a: 1, token_b: 2, "plain": 3})
    assert {"[REDACTED:github-pat]": 1, "[REDACTED:github-pat]#2": 2, "plain": 3} == out


def test_form_keys_pass_and_pw_are_secret():
    """Form fields named pass / pw are secret keys."""
    assert {"pass": "[REDACTED]", "pw": "[REDACTED]", "user": "bob"} == R.redact(
        {"pass": "hunter2", "pw": "hunter3", "user": "bob"}
    )


def test_error_text_is_redacted_before_it_is_cut():
    """A URL password ending at the 4,096-character cut of an error message is masked whole."""
    from auditaspect.decorator import MAX_ERROR_MESSAGE, describe_error

    prefix = "x " * ((MAX_ERROR_MESSAGE - 40) // 2)
    message = prefix + "postgres://app:Sup3rSecretPassw0rd@db/app"
    assert len(prefix) < MAX_ERROR_MESSAGE < len(message)
    described = describe_error(RuntimeError(message))
    assert "Sup3rSec" not in described
    assert "Sup3" not in described[-30:]


def test_redaction_is_idempotent_on_examples():
    """Redacting redacted text changes nothing."""
    rng = random.Random(7)
    for rule_id, template in SPECS:
        sample, _ = make(template, rng)
        once = R.redact_text(SENTENCE.format(sample))
        assert once == R.redact_text(once), rule_id


@settings(max_examples=150, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    seed=st.integers(0, 2**32),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_planted_secret_never_survives(spec, seed, before, after):
    """A generated secret anywhere in random text never survives redaction."""
    sample, secret = make(spec[1], random.Random(seed))
    out = R.redact_text(f"{before} {sample} {after}")
    assert secret not in out


def test_entropy_and_placeholders():
    """The floors' building blocks behave as documented."""
    assert 0.0 == entropy("")
    assert 0.0 == entropy("aaaa")
    assert 2.0 == entropy("abcd")
    assert is_placeholder("${TOKEN}")
    assert is_placeholder(" null ")
    assert not is_placeholder("hunter2")


def test_rules_load_from_toml_and_refuse_mistakes():
    """Rule files are TOML; a bad entry is refused naming the rule."""
    rules = load_rules(
        textwrap.dedent(
            """
            [[rule]]
            id = "acme"
            description = "ACME key"
            keywords = ["acme_"]
            regex = '''acme_[0-9a-f]{8}'''
            """
        )
    )
    custom = Redactor(rules=RuleSet(rules))
    assert "k=[REDACTED:acme]" == custom.redact_text("k=acme_0123abcd")
    assert "ghp_" + "a1B2" * 9 == custom.redact_text("ghp_" + "a1B2" * 9)
    with pytest.raises(ValueError, match="'broken'"):
        load_rules('[[rule]]\nid = "broken"\nkeywords = ["x"]\nregex = "("\n')
    with pytest.raises(ValueError, match="not valid TOML"):
        load_rules("[[rule]")
    with pytest.raises(ValueError, match="unique"):
        RuleSet([*rules, *rules])
    assert "Rule('acme')" == repr(rules[0])
    assert isinstance(rules[0], Rule)


def _unbounded(pattern: str) -> list[str]:
    try:
        from re import _constants as c
        from re import _parser as p
    except ImportError:  # Python 3.10
        import sre_constants as c
        import sre_parse as p

    found: list[str] = []

    def walk(items):
        for op, av in items:
            if op in (c.MAX_REPEAT, c.MIN_REPEAT):
                if av[1] == c.MAXREPEAT:
                    found.append(str(op))
                walk(av[2])
            elif op in (c.SUBPATTERN,):
                walk(av[-1])
            elif op is c.BRANCH:
                for branch in av[1]:
                    walk(branch)
            elif op in (c.ASSERT, c.ASSERT_NOT):
                walk(av[1])

    walk(p.parse(pattern))
    return found


@pytest.mark.parametrize("rule", RULES.rules, ids=[rule.id for rule in RULES.rules])
def test_every_quantifier_is_bounded(rule):
    """No shipped regex has an unbounded repeat (*, +, {n,}): scans cannot run away."""
    assert [] == _unbounded(rule.regex.pattern)


def test_multi_megabyte_hostile_inputs_finish():
    """Keyword-dense, unterminated, repeated-prefix 4 MB inputs are redacted in bounded time.

    Run in a child so that a regex gone quadratic fails here (the bound is a
    hang guard many times the expected time, not a speed target).
    """
    script = textwrap.dedent(
        """
        from auditaspect.redaction import Redactor
        r = Redactor()
        size = 4 * 1024 * 1024
        hostile = [
            ("password=" * (size // 9)),
            ('token = "' + "a" * 1000) * (size // 1009),
            ("-----BEGIN RSA PRIVATE KEY-----" * (size // 31)),
            ("Authorization: Digest " + "x" * 100) * (size // 122),
            ("bearer " * (size // 7)),
            ("://" + "u" * 200 + ":" + "p" * 200) * (size // 403),
            ("eyJ" + "a" * 500 + ".") * (size // 504),
            ("key: " + "Z9" * 600 + " ") * (size // 1206),
        ]
        for text in hostile:
            r.redact_text(text)
        print("done")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert "done" in result.stdout, result.stderr


def test_rule_set_edges():
    """Empty rule sets, short or keyword-free texts and bad keyword lists behave plainly."""
    empty = RuleSet([])
    assert "RuleSet(0 rules)" == repr(empty)
    assert [] == empty.findings("ghp_" + "a1B2" * 9)
    assert [] == RULES.candidates("ab")
    assert [] == RULES.findings("a plain sentence with nothing in it at all, none")
    with pytest.raises(ValueError, match="keywords"):
        load_rules('[[rule]]\nid = "k"\nkeywords = []\nregex = "x"\n')


def test_overlapping_custom_patterns_merge_and_masked_keys_stay_apart():
    """Overlapping matches merge into one mask; several keys masked alike get numbered."""
    redactor = Redactor(extra_patterns=[r"ACME-\d{4}", r"\d{4}-X"])
    assert "id [REDACTED:custom] ok" == redactor.redact_text("id ACME-1234-X ok")
    token = "ghp_" + "a1B2" * 9
    keys = {token: 1, token.replace("a", "b"): 2, token.replace("a", "c"): 3}
    assert ["[REDACTED:github-pat]", "[REDACTED:github-pat]#2", "[REDACTED:github-pat]#3"] == list(
        R.redact(keys)
    )
