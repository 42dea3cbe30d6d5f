// Single sign-on: when the Gallery has an identity provider (GALLERY_OIDC_ISSUER), a person signs in there
// and the Gallery keeps their tokens server-side; the browser holds only an HttpOnly session cookie, and
// every call to /api/... carries the person's token without this page ever seeing it.

let state = { sso: false, signed_in: false, name: null };

/** What /auth/session said: {sso, signed_in, name}. */
export function session() {
  return state;
}

/** Ask the Gallery whether single sign-on is on and who this browser is signed in as. */
export async function loadSession() {
  try {
    const answer = await fetch("/auth/session", { cache: "no-store", headers: { Accept: "application/json" } });
    if (answer.ok) state = await answer.json();
  } catch {
    // an unreachable Gallery shows itself on the page's own calls
  }
  return state;
}

/** Go through the identity provider's login, and come back to this page. */
export function signIn() {
  const next = window.location.pathname + window.location.search;
  window.location.assign(`/auth/login?next=${encodeURIComponent(next)}`);
}

/** Forget this browser's session at the Gallery. */
export async function signOut() {
  await fetch("/auth/logout", { method: "POST" });
  window.location.assign("/");
}
