// An independent verdict on a Sigstore bundle from Sigstore's JavaScript
// verifier (@sigstore/verify 3.1), for bundles signed with keys, which
// sigstore-python does not verify. Offline, with a given trusted root.
//
// Usage: node verify.js '<options as JSON>'; exit status 0 when the bundle
// verifies, 1 when it does not (with the reason on standard error).
// Options: bundle (path), trustedRoot (path), keyPem (the trusted key, for
// key-signed bundles), identity and issuer (keyless), artifact (path: the
// signed blob, or for a DSSE statement the file it names) or digest
// (sha256:<hex>, a DSSE statement's subject), tlogThreshold,
// timestampThreshold, ctlogThreshold.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const { bundleFromJSON } = require('@sigstore/bundle');
const { TrustedRoot } = require('@sigstore/protobuf-specs');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

function main() {
  const opts = JSON.parse(process.argv[2]);
  const bundle = bundleFromJSON(JSON.parse(fs.readFileSync(opts.bundle, 'utf8')));
  const root = TrustedRoot.fromJSON(JSON.parse(fs.readFileSync(opts.trustedRoot, 'utf8')));
  const keyFinder = () => {
    if (!opts.keyPem) throw new Error('no key given for a key-signed bundle');
    return { publicKey: crypto.createPublicKey(opts.keyPem), validFor: () => true };
  };
  const verifier = new Verifier(toTrustMaterial(root, keyFinder), {
    tlogThreshold: opts.tlogThreshold ?? 1,
    timestampThreshold: opts.timestampThreshold ?? 1,
    ctlogThreshold: opts.ctlogThreshold ?? 1,
  });
  const isDsse = bundle.content.$case === 'dsseEnvelope';
  const artifact = opts.artifact && !isDsse ? fs.readFileSync(opts.artifact) : undefined;
  const policy = opts.identity
    ? { subjectAlternativeName: opts.identity, extensions: { issuer: opts.issuer } }
    : undefined;
  verifier.verify(toSignedEntity(bundle, artifact), policy);
  if (isDsse) {
    // The envelope verified; the statement must name what is verified.
    const wanted = opts.digest
      ? opts.digest.replace(/^sha256:/, '')
      : crypto.createHash('sha256').update(fs.readFileSync(opts.artifact)).digest('hex');
    const statement = JSON.parse(bundle.content.dsseEnvelope.payload.toString('utf8'));
    const named = (statement.subject || []).some((s) => s.digest && s.digest.sha256 === wanted);
    if (!named) throw new Error(`the statement does not name sha256:${wanted}`);
  }
}

try {
  main();
} catch (e) {
  process.stderr.write(`${e.message || e}\n`);
  process.exit(1);
}
