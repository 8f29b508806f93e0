import * as grpc from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import { isCode } from "@iotvault/errors";
import { callUnary, registerClient, type UnaryMethod } from "./client.js";

export type HealthStatus = "SERVING" | "NOT_SERVING" | "UNKNOWN" | "SERVICE_UNKNOWN" | "UNREACHABLE";

export interface CheckHealthOptions {
  /** The service name to ask about; "" (default) is the whole server. */
  service?: string | undefined;
  /** Default 2 s. */
  deadlineMs?: number | undefined;
  credentials?: grpc.ChannelCredentials | undefined;
  signal?: AbortSignal | undefined;
}

const HealthClient = grpc.makeGenericClientConstructor(healthService, "grpc.health.v1.Health");

const ANSWERS: ReadonlySet<string> = new Set(["SERVING", "NOT_SERVING", "UNKNOWN", "SERVICE_UNKNOWN"]);

/**
 * Asks a server's standard gRPC health service. Never throws for a server that is down:
 * a closed port or no answer within the deadline is "UNREACHABLE", a service name the server
 * does not know is "SERVICE_UNKNOWN", a server without a health service is "UNKNOWN".
 */
export async function checkHealth(address: string, options: CheckHealthOptions = {}): Promise<HealthStatus> {
  const client = new HealthClient(address, options.credentials ?? grpc.credentials.createInsecure());
  registerClient(client, { service: "health", address });
  const check = client["Check"] as UnaryMethod<{ service: string }, { status?: unknown }>;
  try {
    const answer = await callUnary(
      client,
      check,
      { service: options.service ?? "" },
      { deadlineMs: options.deadlineMs ?? 2000, signal: options.signal },
    );
    return typeof answer.status === "string" && ANSWERS.has(answer.status)
      ? (answer.status as HealthStatus)
      : "UNKNOWN";
  } catch (err) {
    if (isCode(err, "UNAVAILABLE") || isCode(err, "DEADLINE_EXCEEDED")) return "UNREACHABLE";
    if (isCode(err, "NOT_FOUND")) return "SERVICE_UNKNOWN";
    if (isCode(err, "CANCELLED")) throw err;
    return "UNKNOWN";
  } finally {
    client.close();
  }
}
