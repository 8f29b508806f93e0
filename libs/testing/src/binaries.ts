// The binaries the test kit starts are found the same way `iotvault stack` finds them.
export { findNatsServer, findPostgresBin, findRunuser } from "@iotvault/host";
