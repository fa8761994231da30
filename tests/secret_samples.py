"""Generated samples of every shipped secret rule (random bodies, never real keys).

A template's ``{alphabet:N}`` fields become N random characters of that
alphabet; the part between « and » is the secret that must not survive (the
whole sample when there are no markers).
"""

from __future__ import annotations

import random
import re
import string

ALPHABETS = {
    "an": string.ascii_letters + string.digits,
    "alpha": string.ascii_letters,
    "hex": "0123456789abcdef",
    "up": string.ascii_uppercase + string.digits,
    "b32": string.ascii_uppercase + "234567",
    "lo": string.ascii_lowercase + string.digits,
    "dig": string.digits,
    "url": string.ascii_letters + string.digits + "_-",
    "b64": string.ascii_letters + string.digits + "+/",
    "age": "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L",
    "azs": string.ascii_letters + string.digits + "_~.-",
}
UUID = "{hex:8}-{hex:4}-{hex:4}-{hex:4}-{hex:12}"

# (rule id, template)
SPECS: list[tuple[str, str]] = [
    (
        "private-key",
        "-----BEGIN RSA PRIVATE KEY-----\n{b64:64}\n{b64:64}\n{b64:20}==\n"
        "-----END RSA PRIVATE KEY-----",
    ),
    (
        "pgp-private-key",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{b64:64}\n{b64:30}\n"
        "-----END PGP PRIVATE KEY BLOCK-----",
    ),
    ("putty-private-key", "PuTTY-User-Key-File-3: ssh-rsa\nPrivate-Lines: 2«\n{b64:64}\n{b64:40}»"),
    ("age-secret-key", "AGE-SECRET-KEY-1{age:58}"),
    ("jwt", "eyJ{url:30}.eyJ{url:40}.{url:43}"),
    ("jwt-base64", "ZXlK{b64:80}"),
    ("aws-access-key-id", "AKIA{b32:16}"),
    ("aws-secret-access-key", "aws_secret_access_key = «{b64:40}»"),
    ("aws-bedrock", "ABSK{b64:120}"),
    ("gcp-api-key", "AIza{url:35}"),
    ("google-oauth-client-secret", "GOCSPX-{url:28}"),
    ("google-oauth-access-token", "ya29.{url:60}"),
    ("google-oauth-refresh-token", "1//0{url:60}"),
    ("azure-ad-client-secret", "{an:3}8Q~{an:34}"),
    (
        "azure-connection-string",
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=«{b64:86}==»;"
        "EndpointSuffix=core.windows.net",
    ),
    (
        "azure-sas-signature",
        "https://acme.blob.core.windows.net/c/b.txt?sv=2022-11-02&sp=r&sig=«{b64:43}%3D»",
    ),
    ("alibaba-access-key-id", "LTAI{an:20}"),
    ("digitalocean-token", "dop_v1_{hex:64}"),
    ("heroku-api-key", "HRKU-AA{url:58}"),
    ("yandex-iam-token", "t1.{url:20}.{url:86}"),
    ("yandex-api-key", "AQVN{url:36}"),
    ("yandex-aws-access-token", "YC{url:30}7{url:7}"),
    ("cloudflare-origin-ca-key", "v1.0-{hex:24}-{hex:146}"),
    ("flyio-token", "fm2_{b64:80}"),
    ("scalingo-api-token", "tk-us-{url:48}"),
    ("openshift-user-token", "sha256~{url:43}"),
    ("netlify-access-token", "nfp_{an:36}"),
    ("databricks-api-token", "dapi{hex:32}"),
    ("doppler-api-token", "dp.pt.{an:43}"),
    ("pulumi-api-token", "pul-{hex:40}"),
    ("terraform-cloud-token", "{lo:14}.atlasv1.{url:64}"),
    ("vault-token", "hvs.{url:90}"),
    ("infracost-api-token", "ico-{an:32}"),
    ("prefect-api-token", "pnu_{an:36}"),
    ("harness-api-key", "pat.{url:22}.{an:24}.{an:20}"),
    ("octopus-deploy-api-key", "API-{up:26}"),
    ("tailscale-key", "tskey-auth-{an:12}-{an:30}"),
    ("supabase-token", "sbp_{hex:40}"),
    ("clickhouse-cloud-secret", "4b1d{an:38}"),
    ("defined-networking-api-token", "dnkey-{url:26}-{url:52}"),
    ("planetscale-token", "pscale_tkn_{url:43}"),
    ("settlemint-token", "sm_pat_{an:16}"),
    ("authress-access-key", "sc_{lo:10}.{lo:5}.acc_{lo:20}.{lo:60}"),
    ("github-pat", "ghp_{an:36}"),
    ("github-fine-grained-pat", "github_pat_{an:22}_{an:59}"),
    ("github-oauth", "gho_{an:36}"),
    ("github-app-token", "ghs_{an:36}"),
    ("github-refresh-token", "ghr_{an:36}"),
    ("gitlab-token", "glpat-{url:20}"),
    ("gitlab-runner-registration-token", "GR1348941{url:20}"),
    ("gitlab-session-cookie", "_gitlab_session={hex:32}"),
    ("bitbucket-app-password", "ATBB{an:32}"),
    ("atlassian-api-token", "ATATT3{url:186}"),
    ("circleci-token", "CCIPAT_{an:22}_{hex:40}"),
    ("buildkite-token", "bkua_{hex:40}"),
    ("sonar-token", "squ_{hex:40}"),
    ("sourcegraph-token", "sgp_{hex:16}_{hex:40}"),
    ("jfrog-token", "AKCp{an:69}"),
    ("npm-access-token", "npm_{an:36}"),
    ("npm-auth-token", "//registry.npmjs.org/:_authToken=«{an:36}»"),
    ("pypi-upload-token", "pypi-AgEIcHlwaS5vcmc{url:70}"),
    ("rubygem-api-key", "rubygems_{hex:48}"),
    ("clojars-api-token", "CLOJARS_{lo:60}"),
    ("docker-hub-token", "dckr_pat_{url:27}"),
    ("nuget-config-password", '<add key="ClearTextPassword" value="«{an:16}»" />'),
    ("stripe-key", "sk_live_{an:24}"),
    ("stripe-webhook-secret", "whsec_{an:32}"),
    ("square-token", "sq0atp-{url:22}"),
    ("braintree-access-token", "access_token$production${lo:16}${hex:32}"),
    ("shopify-token", "shpat_{hex:32}"),
    ("flutterwave-key", "FLWSECK_TEST-{hex:32}-X"),
    ("duffel-api-token", "duffel_test_{url:43}"),
    ("easypost-api-token", "EZAK{an:54}"),
    ("shippo-api-token", "shippo_live_{hex:40}"),
    ("plaid-access-token", "access-sandbox-" + UUID),
    ("razorpay-key", "rzp_live_{an:14}"),
    ("coinbase-access-token", "coinbase_api_secret = «{url:64}»"),
    ("slack-token", "xoxb-{dig:12}-{dig:12}-{an:24}"),
    ("slack-webhook-url", "https://hooks.slack.com/services/T{up:8}/B{up:8}/{an:24}"),
    ("discord-webhook-url", "https://discord.com/api/webhooks/{dig:18}/{url:68}"),
    ("discord-bot-token", "discord: «M{an:10}1{an:12}.{url:6}.{url:27}»"),
    ("telegram-bot-token", "{dig:9}:A{url:34}"),
    (
        "microsoft-teams-webhook",
        "https://acme.webhook.office.com/webhookb2/"
        + UUID
        + "@"
        + UUID
        + "/IncomingWebhook/{hex:32}/"
        + UUID,
    ),
    ("twilio-api-key", "SK{hex:32}"),
    ("sendgrid-api-token", "SG.{url:22}.{url:43}"),
    ("mailgun-key", "key-{hex:32}"),
    ("mailgun-signing-key", "mailgun signing key «{hex:32}-{hex:8}-{hex:8}»"),
    ("mailchimp-api-key", "{hex:32}-us12"),
    ("brevo-api-key", "xkeysib-{hex:64}-{an:16}"),
    ("resend-api-key", "re_{an:8}_{an:24}"),
    ("openai-api-key", "sk-proj-{url:40}T3BlbkFJ{url:40}"),
    ("anthropic-api-key", "sk-ant-api03-{url:93}AA"),
    ("sk-prefixed-key", "sk-{an:10}7{an:30}"),
    ("huggingface-token", "hf_{alpha:34}"),
    ("perplexity-api-key", "pplx-{an:48}"),
    ("groq-api-key", "gsk_{an:52}"),
    ("replicate-api-token", "r8_{an:37}"),
    ("xai-api-key", "xai-{an:80}"),
    ("grafana-token", "glsa_{an:32}_{hex:8}"),
    ("sentry-token", "sntryu_{hex:64}"),
    ("new-relic-key", "NRAK-{up:27}"),
    ("dynatrace-api-token", "dt0c01.{up:24}.{up:64}"),
    ("postman-api-token", "PMAK-{hex:24}-{hex:34}"),
    ("linear-api-key", "lin_api_{an:40}"),
    ("notion-api-token", "ntn_{dig:11}{an:35}"),
    ("airtable-token", "pat{an:14}.{hex:64}"),
    ("typeform-api-token", "tfp_{url:59}"),
    ("readme-api-token", "rdme_{lo:70}"),
    ("frameio-api-token", "fio-u-{url:64}"),
    ("mapbox-token", "sk.eyJ{url:60}.{url:22}"),
    ("1password-token", "ops_eyJ{b64:250}"),
    ("intra42-client-secret", "s-s4t2ud-{hex:64}"),
    ("dropbox-api-token", "sl.{url:140}"),
    ("facebook-access-token", "EAAC{an:150}"),
    ("facebook-app-token", "{dig:16}|{url:27}"),
    ("twitter-bearer-token", "AAAAAAAAAAAAAAAAAAAAAA{an:80}"),
    ("launchdarkly-key", "api-" + UUID),
    ("url-password", "postgresql://app:«{an:16}»@db.internal:5432/app"),
    ("curl-basic-auth", "curl -u admin:«{an:12}» https://api.example.com"),
    ("authorization-header", "Authorization: Basic «{b64:24}»"),
    ("bearer-token", "Bearer «{an:40}»"),
    ("cookie-header", "Cookie: «session={an:32}; theme=dark»"),
    ("password-assignment", 'DB_PASSWORD="«{an:12}»"'),
    ("secret-assignment", "client_secret: «{an:24}»"),
    ("key-assignment", "LicenseKey: «{an:20}7{an:9}»"),
    ("cli-secret-flag", "deploy --api-key «{an:24}» --region eu"),
    ("xml-secret-element", "<apiToken>«{an:32}»</apiToken>"),
]

_FIELD = re.compile(r"\{(\w+):(\d+)\}")


def make(template: str, rng: random.Random) -> tuple[str, str]:
    """Return (sample, secret) for a template, with fresh random bodies."""
    text = _FIELD.sub(
        lambda m: "".join(rng.choice(ALPHABETS[m.group(1)]) for _ in range(int(m.group(2)))),
        template,
    )
    if "«" not in text:
        return text, text
    secret = text[text.index("«") + 1 : text.index("»")]
    return text.replace("«", "").replace("»", ""), secret
