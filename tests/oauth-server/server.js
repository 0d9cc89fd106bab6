// A real, certified OAuth 2.0 server (oidc-provider) configured the way Sage behaves:
// authorization code with PKCE S256, client credentials in the form body only,
// 300 s access tokens, 60 s codes, rotating refresh tokens (reuse → invalid_grant and
// the grant revoked), and an interaction that signs in and consents automatically
// (or denies for login_hint=deny). Prints "listening <port>" when ready.
//
//   REDIRECT_URI=http://127.0.0.1:8080/sage/callback node server.js
import net from 'node:net';
import Provider from 'oidc-provider';

const redirectUri = process.env.REDIRECT_URI;
if (!redirectUri) {
  console.error('REDIRECT_URI is required');
  process.exit(2);
}

const port = await new Promise((resolve) => {
  const probe = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = probe.address();
    probe.close(() => resolve(port));
  });
});

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'ledger-conformance',
    client_secret: 'ledger-conformance-secret',
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
    scope: 'full_access readonly',
  }],
  scopes: ['full_access', 'readonly'],
  pkce: { required: () => true, methods: ['S256'] },
  ttl: { AccessToken: 300, AuthorizationCode: 60, RefreshToken: 31 * 86400, Grant: 365 * 86400, Session: 3600, Interaction: 600 },
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: { devInteractions: { enabled: false }, revocation: { enabled: true } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
});
provider.proxy = false;

// Sage takes client credentials in the form body only: refuse HTTP Basic.
provider.use(async (ctx, next) => {
  if (ctx.path === '/token' && ctx.get('authorization')) {
    ctx.status = 401;
    ctx.body = { error: 'invalid_client', error_description: 'use client_secret_post' };
    return;
  }
  await next();
});

// Sign in and consent without a person.
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.params.login_hint === 'deny') {
    return provider.interactionFinished(ctx.req, ctx.res, { error: 'access_denied', error_description: 'denied' });
  }
  if (details.prompt.name === 'login') {
    return provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: 'merchant-1' } }, { mergeWithLastSubmission: false });
  }
  const grant = details.grantId ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  return provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId } }, { mergeWithLastSubmission: true });
});

provider.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));
