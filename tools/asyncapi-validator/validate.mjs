// Validate an AsyncAPI document with the maintained AsyncAPI parser, Avro schema parser registered so
// that the Avro payloads (referenced .avsc files) are resolved and checked too.
// usage: node validate.mjs <document>   exit 0: valid (warnings printed); 1: errors printed
import { resolve } from "node:path";
import { Parser, fromFile } from "@asyncapi/parser";
import { AvroSchemaParser } from "@asyncapi/avro-schema-parser";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate.mjs <asyncapi document>");
  process.exit(2);
}
const parser = new Parser();
parser.registerSchemaParser(AvroSchemaParser());
const { document, diagnostics } = await fromFile(parser, resolve(file)).parse();
const severities = ["error", "warning", "info", "hint"];
for (const d of diagnostics) {
  console.log(`${severities[d.severity]}: ${d.code}: ${d.message} at /${(d.path || []).join("/")}`);
}
if (!document || diagnostics.some((d) => d.severity === 0)) {
  console.log("INVALID");
  process.exit(1);
}
console.log(`VALID asyncapi ${document.version()}: ${document.channels().length} channels, ` +
  `${document.operations().length} operations, ${document.messages().length} messages`);
