/**
 * Protocol versioning. Every connection (agent → coordinator, agent → agent) starts with a hello that carries
 * PROTOCOL_VERSION. Peers with the same major version talk; a different major is refused with
 * CloseCode.VERSION_MISMATCH and a reason that names both versions. Minor versions only add optional fields.
 */
import { ProtocolError } from './errors.ts';

export const PROTOCOL_VERSION = '1.0';

export interface Version {
  major: number;
  minor: number;
}

export function parseVersion(text: string): Version {
  const m = /^(\d{1,4})\.(\d{1,4})$/.exec(text);
  if (!m) throw new ProtocolError('PRT_ERR_INVALID', `protocol version '${text.slice(0, 20)}' is not MAJOR.MINOR`);
  return { major: Number(m[1]), minor: Number(m[2]) };
}

/** Throws PRT_ERR_VERSION_MISMATCH unless `theirs` shares our major version. `who` names the other side. */
export function assertCompatible(theirs: string, who: string, ours: string = PROTOCOL_VERSION): void {
  const t = parseVersion(theirs);
  const o = parseVersion(ours);
  if (t.major !== o.major) {
    throw new ProtocolError(
      'PRT_ERR_VERSION_MISMATCH',
      `protocol version mismatch: ${who} speaks ${theirs}, this side speaks ${ours}; run the same major version on both`,
    );
  }
}
