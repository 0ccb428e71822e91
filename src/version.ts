/** The program version, printed by --version and written into rendered rules. */
export const VERSION = "0.3.0";
