// A real OpenID Connect provider for the SSO tests: panva's oidc-provider (certified OpenID Connect), not a mock of
// the protocol. Started by tests/support/oidc.py with its configuration in the environment:
//   OIDC_PORT            the port to listen on (127.0.0.1)
//   OIDC_CLIENT          JSON {client_id, client_secret, redirect_uris, post_logout_redirect_uris}
//   OIDC_USERS           JSON {login: {email, email_verified, groups}}: who may sign in, with their claims
// The sign-in form is the library's development one (devInteractions): any password, a login from OIDC_USERS.
// Consent is granted without asking (a first-party client), so a test signs in with one form.
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const client = JSON.parse(process.env.OIDC_CLIENT);
const users = JSON.parse(process.env.OIDC_USERS);

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{ ...client, grant_types: ['authorization_code'], response_types: ['code'] }],
  // Scope -> the claims it releases (userinfo and, with them, the ID token).
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  pkce: { required: () => true },
  cookies: { keys: ['onceonly-test-oidc-provider'] },
  async findAccount(ctx, id) {
    const user = users[id];
    if (!user) return undefined;
    return { accountId: id, async claims() { return { sub: id, name: id, ...user }; } };
  },
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.params.scope);
    await grant.save();
    return grant;
  },
});
provider.proxy = false;
// Unknown logins: the library's error page rather than a crash.
provider.on('server_error', (ctx, err) => console.error('server_error', err));

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on http://127.0.0.1:${port}`);
});
