/**
 * A gateway that reads its models from a coordinator announces itself to it (POST /api/gateways with the cluster
 * token; gateway/announce.ts sends, coordinator/cluster/gateways.ts keeps the latest announcement). The period is
 * a contract between the two: the coordinator shows a gateway as not alive after a few periods of silence.
 */

/** How often a gateway announces itself, ms. */
export const GATEWAY_ANNOUNCE_MS = 10_000;

/** The body of an announcement (coordinator/api/schemas.ts validates it). */
export interface GatewayAnnouncement {
  name: string;
  url: string; // http(s)://host:port the coordinator can reach
  adminKey: string;
}
