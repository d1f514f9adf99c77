/**
 * Personal data masked before anything is compared or kept: e-mail addresses → <EMAIL>, IPv4/IPv6 addresses →
 * <IP>, payment card numbers (13–19 digits, spaces or dashes allowed, Luhn-valid) → <CARD>, phone numbers →
 * <PHONE>. Kinds are masked in that order, so a card's digits are never read as a phone number.
 *
 * Phones are matched only in shapes numbers rarely take otherwise — a leading +country code, (area) 555-0123,
 * 555-123-4567 / 555.123.4567, or a national trunk 0 followed by grouped digits — so years, prices, versions,
 * dates and plain integers stay as they are; a phone written as one run of digits is not caught.
 */
import { isIPv4, isIPv6 } from 'node:net';

export type PiiKind = 'email' | 'phone' | 'ip' | 'card';
export type PiiCounts = Record<PiiKind, number>;

export const newPiiCounts = (): PiiCounts => ({ email: 0, phone: 0, ip: 0, card: 0 });

const EMAIL = /(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])/g;
const IPV6_CANDIDATE = /(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|\d{1,3}(?:\.\d{1,3}){3})(?![\w:])/g;
const IPV4_CANDIDATE = /(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)/g;
const CARD_CANDIDATE = /(?<![\w.,-])\d(?:[ -]?\d){12,18}(?![\w]|[.,]\d)/g;
const PHONE = new RegExp(
  [
    String.raw`(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}(?![\w])`, // +44 20 7946 0958, +1-202-555-0143
    String.raw`(?<![\w(])\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}(?![\w]|[.,-]\d)`, // (202) 555-0143
    String.raw`(?<![\w.$€£-])\d{3}[.-]\d{3}[.-]\d{4}(?![\w]|[.,-]\d)`, // 202-555-0143, 202.555.0143
    String.raw`(?<![\w.$€£-])0\d{1,4}[ /-]\d{3,4}[ -]\d{3,4}(?![\w]|[.,-]\d)`, // 030 1234 5678, 020-7946-0958
  ].join('|'),
  'g',
);

export interface Masked {
  text: string;
  counts: PiiCounts;
}

/** `text` with every e-mail, IP, card and phone number replaced by its placeholder, and how many of each. */
export function maskPii(text: string): Masked {
  const counts = newPiiCounts();
  // Cheap pre-checks: most documents have no '@', no ':'-runs and few digits, and skip those regexes.
  let s = text;
  if (s.includes('@')) s = s.replace(EMAIL, () => (counts.email++, '<EMAIL>'));
  if (s.includes(':')) {
    s = s.replace(IPV6_CANDIDATE, (m) => {
      const groups = m.split(':').filter((g) => g !== '').length;
      if (groups < 3 || !isIPv6(m)) return m;
      counts.ip++;
      return '<IP>';
    });
  }
  if (!/\d/.test(s)) return { text: s, counts };
  s = s.replace(IPV4_CANDIDATE, (m) => (isIPv4(m) ? (counts.ip++, '<IP>') : m));
  s = s.replace(CARD_CANDIDATE, (m) => {
    const digits = m.replace(/[ -]/g, '');
    if (digits.length < 13 || digits.length > 19 || !luhnValid(digits)) return m;
    counts.card++;
    return '<CARD>';
  });
  s = s.replace(PHONE, (m) => {
    const digits = m.replace(/\D/g, '').length;
    if (digits < 8 || digits > 15) return m;
    counts.phone++;
    return '<PHONE>';
  });
  return { text: s, counts };
}

/** The Luhn checksum of a digit string: what every payment card number satisfies. */
export function luhnValid(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}
