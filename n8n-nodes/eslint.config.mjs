// eslint-plugin-n8n-nodes-base's three rulesets (nodes, credentials, the
// community package.json), as n8n's node tooling applies them.
import tsParser from '@typescript-eslint/parser';
import n8n from 'eslint-plugin-n8n-nodes-base';

const plugins = { 'n8n-nodes-base': n8n };
const ts = { parser: tsParser, parserOptions: { sourceType: 'module' } };

export default [
  { ignores: ['dist/**', 'node_modules/**', 'scripts/**', 'workflows/**', 'eslint.config.mjs'] },
  {
    files: ['package.json'],
    languageOptions: { parser: tsParser, parserOptions: { extraFileExtensions: ['.json'] } },
    plugins,
    rules: {
      ...n8n.configs.community.rules,
      // The package is Apache-2.0, like the rest of Orch.
      'n8n-nodes-base/community-package-json-license-not-default': 'off',
    },
  },
  {
    files: ['credentials/**/*.ts'],
    languageOptions: ts,
    plugins,
    rules: {
      ...n8n.configs.credentials.rules,
      // "Only applicable to nodes in the main repository" (the rule's own doc):
      // a community credential links a full URL.
      'n8n-nodes-base/cred-class-field-documentation-url-miscased': 'off',
    },
  },
  { files: ['nodes/**/*.ts'], languageOptions: ts, plugins, rules: n8n.configs.nodes.rules },
];
