// Signs an image with a real Sigstore signer, as cosign v3 does: an in-toto
// statement about the image digest, in a DSSE envelope, in a Sigstore bundle
// built by @sigstore/sign (with a local P-256 key and no witnesses, so no
// Rekor), attached to the image by @sigstore/oci (as an OCI referrer, or in
// the sha256-<hex> tag index on registries without the referrers API).
//
// Usage: node sign.js '<options as JSON>'; prints the descriptor and bundle.
// Options: keyPem (PKCS#8 private key), hint, registry (host:port), repo,
// digest (the image to attach to), subjectDigest (what the statement names;
// the same digest unless a test wants a mismatch), predicateType, predicate,
// user, password.
'use strict';
const crypto = require('crypto');
const { DSSEBundleBuilder } = require('@sigstore/sign');
const { bundleToJSON } = require('@sigstore/bundle');
const { attachArtifactToImage } = require('@sigstore/oci');

async function main() {
  const opts = JSON.parse(process.argv[2]);
  const key = crypto.createPrivateKey(opts.keyPem);
  const publicKey = crypto.createPublicKey(key).export({ type: 'spki', format: 'pem' });
  const signer = {
    sign: async (data) => ({
      signature: crypto.sign('sha256', data, key),
      key: { $case: 'publicKey', publicKey, hint: opts.hint },
    }),
  };
  const builder = new DSSEBundleBuilder({ signer, witnesses: [] });
  const statement = {
    _type: 'https://in-toto.io/Statement/v1',
    subject: [
      {
        name: `${opts.registry}/${opts.repo}`,
        digest: { sha256: opts.subjectDigest.replace(/^sha256:/, '') },
      },
    ],
    predicateType: opts.predicateType,
    predicate: opts.predicate,
  };
  const bundle = bundleToJSON(
    await builder.create({
      data: Buffer.from(JSON.stringify(statement)),
      type: 'application/vnd.in-toto+json',
    })
  );
  const descriptor = await attachArtifactToImage({
    imageName: `${opts.registry}/${opts.repo}`,
    imageDigest: opts.digest,
    artifact: Buffer.from(JSON.stringify(bundle)),
    mediaType: bundle.mediaType,
    annotations: {
      'dev.sigstore.bundle.content': 'dsse-envelope',
      'dev.sigstore.bundle.predicateType': opts.predicateType,
    },
    credentials: { username: opts.user, password: opts.password },
  });
  process.stdout.write(JSON.stringify({ descriptor, bundle }));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  if (e && e.cause) console.error('cause:', e.cause);
  process.exit(1);
});
