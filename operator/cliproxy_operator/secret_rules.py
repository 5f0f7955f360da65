"""What a Secret's owner must have allowed before the operator uses it: the opt-in label, the refresh URL.

A CR author may name any Secret of the namespace; the Secret's owner, not the author, decides whether it serves
as a credential (the label) and where its refresh token may be sent (the vendor's hosts, or the annotation).
Pure rules: the kube layer reads the labels and annotations, render and the token refresher apply them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

OPT_IN_LABEL = "cliproxy.io/credential"  # value "true": this Secret may back a ProviderCredential
REFRESH_URL_ANNOTATION = "cliproxy.io/refresh-url"  # the one refreshURL (besides the vendor's) its owner allows

#: The vendors' own token endpoints a ``refreshURL`` may name without the Secret's consent (Kiro's hosts in
#: cliproxy_proxy.oauth.kiro: SOCIAL_REFRESH and OIDC_REFRESH, for any region).
VENDOR_REFRESH_URLS = {
    "kiro": re.compile(r"https://(prod\.[a-z0-9-]+\.auth\.desktop\.kiro\.dev|oidc\.[a-z0-9-]+\.amazonaws\.com)/?"),
}


def opted_in(labels: Mapping[str, str] | None) -> bool:
    return (labels or {}).get(OPT_IN_LABEL) == "true"


def refresh_url_refusal(provider: str, refresh_url: str | None, allowed_by_secret: str | None) -> str | None:
    """Why ``refresh_url`` may not receive this credential's refresh token, or None when it may."""
    if refresh_url is None:
        return None
    vendor = VENDOR_REFRESH_URLS.get(provider)
    if vendor is not None and vendor.fullmatch(refresh_url):
        return None
    if allowed_by_secret is not None and allowed_by_secret.rstrip("/") == refresh_url.rstrip("/"):
        return None
    return (
        f"refreshURL is not one of {provider}'s token endpoints and the token Secret's "
        f"{REFRESH_URL_ANNOTATION} annotation does not allow it"
    )
