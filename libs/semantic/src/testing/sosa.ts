/**
 * Generated SOSA/SSN-style data for tests and benchmarks: an ontology header with a version,
 * platforms, sensors and observations whose results are blank nodes (QUDT quantity values).
 * Deterministic for a given seed.
 */

export interface SosaOptions {
  /** Sensors to describe (default 3). */
  sensors?: number;
  /** Observations per sensor (default 4). */
  observationsPerSensor?: number;
  /** Changes values, not the shape (default 1). */
  seed?: number;
  /** owl:versionIRI / owl:versionInfo of the ontology header (default "1.0"). */
  version?: string;
  /** IRI namespace of the generated individuals (default http://example.org/iot/). */
  base?: string;
}

const PREFIXES = `@prefix sosa: <http://www.w3.org/ns/sosa/> .
@prefix ssn: <http://www.w3.org/ns/ssn/> .
@prefix owl: <http://www.w3.org/2002/07/owl#> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
@prefix qudt: <http://qudt.org/schema/qudt/> .
@prefix unit: <http://qudt.org/vocab/unit/> .
`;

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

/**
 * A Turtle document: `ex:` individuals, one `owl:Ontology` with a version, N sensors on one
 * platform, each with M observations (`sosa:hasResult [ qudt:numericValue ...; qudt:unit ... ]`).
 * Triples: 7 + 5 per sensor + 9 per observation.
 *
 * ```ts
 * const ttl = sosaTurtle({ sensors: 10, observationsPerSensor: 100 });
 * ```
 */
export function sosaTurtle(options: SosaOptions = {}): string {
  const base = options.base ?? "http://example.org/iot/";
  const version = options.version ?? "1.0";
  const random = rng(options.seed ?? 1);
  const lines: string[] = [PREFIXES, `@prefix ex: <${base}> .`, ""];
  lines.push(
    `<${base}ontology> a owl:Ontology ;`,
    `  owl:versionIRI <${base}ontology/${version}> ;`,
    `  owl:versionInfo "${version}" ;`,
    `  rdfs:label "Generated IoT deployment" ;`,
    `  owl:imports <http://www.w3.org/ns/sosa/> , <http://www.w3.org/ns/ssn/> .`,
    "",
    "ex:platform1 a sosa:Platform .",
  );
  const sensors = options.sensors ?? 3;
  const perSensor = options.observationsPerSensor ?? 4;
  for (let s = 0; s < sensors; s++) {
    lines.push(
      `ex:sensor${s} a sosa:Sensor ; rdfs:label "sensor ${s}" ; sosa:isHostedBy ex:platform1 ;`,
      `  sosa:observes ex:temperature ; ssn:implements ex:procedure${s % 3} .`,
    );
    for (let o = 0; o < perSensor; o++) {
      const value = (15 + random() * 15).toFixed(2);
      const minute = String(o % 60).padStart(2, "0");
      const hour = String(Math.floor(o / 60) % 24).padStart(2, "0");
      lines.push(
        `ex:obs-${s}-${o} a sosa:Observation ; sosa:madeBySensor ex:sensor${s} ;`,
        `  sosa:observedProperty ex:temperature ; sosa:hasFeatureOfInterest ex:room${s % 5} ;`,
        `  sosa:resultTime "2024-01-01T${hour}:${minute}:00Z"^^xsd:dateTime ;`,
        `  sosa:hasResult [ a qudt:QuantityValue ; qudt:numericValue "${value}"^^xsd:decimal ; qudt:unit unit:DEG_C ] .`,
      );
    }
  }
  return lines.join("\n") + "\n";
}

/** SHACL shapes for the generated data: every observation has exactly one sensor and one result. */
export function sosaShapesTurtle(): string {
  return `${PREFIXES}@prefix sh: <http://www.w3.org/ns/shacl#> .
@prefix ex: <http://example.org/iot/shapes#> .

ex:ObservationShape a sh:NodeShape ;
  sh:targetClass sosa:Observation ;
  sh:property [ sh:path sosa:madeBySensor ; sh:minCount 1 ; sh:maxCount 1 ; sh:class sosa:Sensor ] ;
  sh:property [ sh:path sosa:hasResult ; sh:minCount 1 ; sh:maxCount 1 ] ;
  sh:property [ sh:path sosa:resultTime ; sh:datatype xsd:dateTime ; sh:minCount 1 ] .
`;
}

/** Triples `sosaTurtle(options)` produces. */
export function sosaTripleCount(options: SosaOptions = {}): number {
  const sensors = options.sensors ?? 3;
  const perSensor = options.observationsPerSensor ?? 4;
  return 7 + 5 * sensors + 9 * sensors * perSensor;
}
