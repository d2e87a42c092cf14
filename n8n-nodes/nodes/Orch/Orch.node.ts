import { createHmac, timingSafeEqual } from 'crypto';
import type {
	IDataObject,
	IExecuteFunctions,
	IHttpRequestMethods,
	IHttpRequestOptions,
	ILoadOptionsFunctions,
	INodeExecutionData,
	INodePropertyOptions,
	INodeType,
	INodeTypeDescription,
	IWebhookFunctions,
	IWebhookResponseData,
	ResourceMapperField,
	ResourceMapperFields,
} from 'n8n-workflow';
import { NodeApiError, NodeOperationError, WAIT_INDEFINITELY } from 'n8n-workflow';

type Ctx = IExecuteFunctions | ILoadOptionsFunctions | IWebhookFunctions;

/** A request to Orch with the credential's key; Orch's `{error: {...}}` becomes a NodeApiError. */
async function orch(
	ctx: Ctx,
	method: IHttpRequestMethods,
	path: string,
	options: { body?: IDataObject; qs?: IDataObject; headers?: IDataObject; text?: boolean } = {},
): Promise<any> {
	const credentials = await ctx.getCredentials('orchApi');
	const baseUrl = String(credentials.baseUrl).replace(/\/+$/, '');
	const request: IHttpRequestOptions = {
		method,
		url: `${baseUrl}${path}`,
		qs: options.qs,
		headers: options.headers,
		json: !options.text,
	};
	if (options.body !== undefined) request.body = options.body;
	if (options.text) request.encoding = 'text';
	try {
		return await ctx.helpers.httpRequestWithAuthentication.call(ctx, 'orchApi', request);
	} catch (error) {
		const body = (error as any)?.response?.data ?? (error as any)?.cause?.response?.data;
		const orchError = typeof body === 'object' && body !== null ? (body as IDataObject).error : undefined;
		const message =
			orchError && typeof orchError === 'object' ? String((orchError as IDataObject).message) : undefined;
		throw new NodeApiError(ctx.getNode(), error as any, message ? { message } : {});
	}
}

/** The signing secret Orch derives from an API key: HMAC-SHA256(key, "orch webhook signing secret v1"). */
export function keySigningSecret(apiKey: string): Buffer {
	return createHmac('sha256', apiKey).update('orch webhook signing secret v1').digest();
}

/** Whether a Standard Webhooks signature header holds a valid `v1,` signature of `id.timestamp.body`. */
export function signatureValid(
	secret: Buffer,
	id: string,
	timestamp: string,
	body: Buffer,
	header: string,
): boolean {
	const expected = createHmac('sha256', secret)
		.update(`${id}.${timestamp}.`)
		.update(body)
		.digest();
	return header
		.split(' ')
		.filter((s) => s.startsWith('v1,'))
		.some((s) => {
			const got = Buffer.from(s.slice(3), 'base64');
			return got.length === expected.length && timingSafeEqual(got, expected);
		});
}

function parseJson(ctx: IExecuteFunctions, name: string, i: number): IDataObject {
	const value = ctx.getNodeParameter(name, i);
	if (typeof value === 'object' && value !== null) return value as IDataObject;
	try {
		return JSON.parse(String(value)) as IDataObject;
	} catch (error) {
		throw new NodeOperationError(ctx.getNode(), `${name} is not valid JSON: ${(error as Error).message}`, {
			itemIndex: i,
		});
	}
}

/** The body of a chat or batch job from the node's parameters (item `i`). */
function jobBody(ctx: IExecuteFunctions, jobType: string, i: number): IDataObject {
	const body: IDataObject = {};
	if (jobType === 'chat') {
		body.prompt = ctx.getNodeParameter('prompt', i) as string;
	} else if ((ctx.getNodeParameter('batchInput', i) as string) === 'plan') {
		body.plan = parseJson(ctx, 'plan', i);
	} else {
		body.request = ctx.getNodeParameter('request', i) as string;
	}
	const extra = ctx.getNodeParameter('jobOptions', i, {}) as IDataObject;
	for (const [key, value] of Object.entries(extra)) {
		if (value === '' || value === undefined) continue;
		if (key === 'tags' || key === 'tools') {
			body[key] = String(value)
				.split(',')
				.map((s) => s.trim())
				.filter((s) => s);
		} else if (key === 'metadata') {
			body.metadata = typeof value === 'string' ? JSON.parse(value) : value;
		} else if (jobType === 'batch' && ['model', 'system', 'sessionId'].includes(key)) {
			if (key === 'model') body.planner_model = value;
		} else if (jobType === 'chat' && ['tools', 'plannerModel'].includes(key)) {
			continue;
		} else {
			const names: IDataObject = {
				sessionId: 'session_id',
				obsidianPath: 'obsidian_path',
				maxAttempts: 'max_attempts',
				plannerModel: 'planner_model',
			};
			body[(names[key] as string) ?? key] = value;
		}
	}
	return body;
}

const jobFields = (operations: string[], jobTypes?: string[]) => ({
	show: { resource: ['job', 'chat'], operation: operations, ...(jobTypes ? { jobType: jobTypes } : {}) },
});

export class Orch implements INodeType {
	description: INodeTypeDescription = {
		displayName: 'Orch',
		name: 'orch',
		icon: 'file:orch.svg',
		group: ['transform'],
		version: 1,
		subtitle: '={{$parameter["operation"] + ": " + $parameter["resource"]}}',
		description: 'Chat with your subscriptions, run batch jobs and plans, call MCP tools through Orch',
		defaults: { name: 'Orch' },
		usableAsTool: true,
		inputs: ['main'],
		outputs: ['main'],
		credentials: [{ name: 'orchApi', required: true }],
		// Orch calls this back when a job submitted by "Submit and Wait for Callback" ends.
		webhooks: [
			{
				name: 'default',
				httpMethod: 'POST',
				responseMode: 'onReceived',
				responseData: '',
				path: '={{ $nodeId }}',
				restartWebhook: true,
				isFullPath: true,
			},
		],
		properties: [
			{
				displayName: 'Resource',
				name: 'resource',
				type: 'options',
				noDataExpression: true,
				options: [
					{ name: 'Chat', value: 'chat' },
					{ name: 'Job', value: 'job' },
					{ name: 'Plan', value: 'plan' },
					{ name: 'Server', value: 'server' },
					{ name: 'Session', value: 'session' },
					{ name: 'Tool', value: 'tool' },
				],
				default: 'chat',
			},
			{
				displayName: 'Operation',
				name: 'operation',
				type: 'options',
				noDataExpression: true,
				displayOptions: { show: { resource: ['chat'] } },
				options: [
					{
						name: 'Send and Wait for Answer',
						value: 'send',
						description: 'Ask a model and wait for its answer (OpenAI chat completions)',
						action: 'Send a message and wait for the answer',
					},
					{
						name: 'Submit',
						value: 'submit',
						description: 'Queue a chat job and go on at once (202 with its URLs)',
						action: 'Submit a chat job',
					},
					{
						name: 'Submit and Wait for Callback',
						value: 'submitAndWait',
						description: 'Queue a chat job and pause this execution until Orch calls back with the result',
						action: 'Submit a chat job and wait for its callback',
					},
				],
				default: 'send',
			},
			{
				displayName: 'Operation',
				name: 'operation',
				type: 'options',
				noDataExpression: true,
				displayOptions: { show: { resource: ['job'] } },
				options: [
					{ name: 'Cancel', value: 'cancel', description: 'Cancel a job', action: 'Cancel a job' },
					{ name: 'Get', value: 'get', description: 'Get a job and its status', action: 'Get a job' },
					{ name: 'Get Many', value: 'list', description: 'List jobs', action: 'Get many jobs' },
					{ name: 'Get Result', value: 'result', description: "Get a finished job's result", action: 'Get a job result' },
					{
						name: 'Submit and Wait for Callback',
						value: 'submitAndWait',
						description: 'Queue a batch job and pause this execution until Orch calls back with the result',
						action: 'Submit a batch job and wait for its callback',
					},
					{
						name: 'Submit Batch',
						value: 'submit',
						description: 'Queue a batch job from a plan or a plain-language request',
						action: 'Submit a batch job',
					},
				],
				default: 'submitAndWait',
			},
			{
				displayName: 'Operation',
				name: 'operation',
				type: 'options',
				noDataExpression: true,
				displayOptions: { show: { resource: ['plan'] } },
				options: [
					{
						name: 'Preview',
						value: 'preview',
						description: 'Validate a plan (or plan a request) and get its analysis; nothing runs',
						action: 'Preview a plan',
					},
					{
						name: 'Get Mermaid Graph',
						value: 'mermaid',
						description: "A plan's graph as Mermaid text",
						action: 'Get a plan graph as mermaid',
					},
				],
				default: 'preview',
			},
			{
				displayName: 'Operation',
				name: 'operation',
				type: 'options',
				noDataExpression: true,
				displayOptions: { show: { resource: ['tool'] } },
				options: [
					{ name: 'Call', value: 'call', description: 'Call an MCP tool through Orch', action: 'Call a tool' },
					{ name: 'Get Many', value: 'list', description: "List the MCP servers' tools", action: 'Get many tools' },
				],
				default: 'call',
			},
			{
				displayName: 'Operation',
				name: 'operation',
				type: 'options',
				noDataExpression: true,
				displayOptions: { show: { resource: ['session'] } },
				options: [
					{ name: 'Delete', value: 'delete', description: 'Delete a chat session', action: 'Delete a session' },
					{
						name: 'Export Memory',
						value: 'exportMemory',
						description: 'The session as an Obsidian-ready note (front matter, summary, transcript)',
						action: 'Export a session as a note',
					},
					{ name: 'Get', value: 'get', description: 'Get a session and its messages', action: 'Get a session' },
				],
				default: 'exportMemory',
			},
			{
				displayName: 'Operation',
				name: 'operation',
				type: 'options',
				noDataExpression: true,
				displayOptions: { show: { resource: ['server'] } },
				options: [
					{ name: 'Get Many', value: 'list', description: 'List MCP servers and their state', action: 'Get many servers' },
					{
						name: 'Test',
						value: 'test',
						description: 'Connect to a server and list its tools',
						action: 'Test a server',
					},
				],
				default: 'list',
			},

			// ----- chat and job submission -----
			{
				displayName: 'Job Type',
				name: 'jobType',
				type: 'hidden',
				displayOptions: { show: { resource: ['chat'] } },
				default: 'chat',
			},
			{
				displayName: 'Job Type',
				name: 'jobType',
				type: 'hidden',
				displayOptions: { show: { resource: ['job'] } },
				default: 'batch',
			},
			{
				displayName: 'Prompt',
				name: 'prompt',
				type: 'string',
				typeOptions: { rows: 4 },
				required: true,
				displayOptions: { show: { resource: ['chat'] } },
				default: '',
				description: 'What to ask',
			},
			{
				displayName: 'Model',
				name: 'model',
				type: 'string',
				displayOptions: { show: { resource: ['chat'], operation: ['send'] } },
				default: 'auto',
				description: 'A provider, provider/model or auto (GET /v1/models lists them)',
			},
			{
				displayName: 'Input',
				name: 'batchInput',
				type: 'options',
				displayOptions: { show: { resource: ['job'], operation: ['submit', 'submitAndWait'] } },
				options: [
					{ name: 'Request in Plain Language', value: 'request' },
					{ name: 'Plan (JSON)', value: 'plan' },
				],
				default: 'request',
			},
			{
				displayName: 'Input',
				name: 'batchInput',
				type: 'options',
				displayOptions: { show: { resource: ['plan'] } },
				options: [
					{ name: 'Plan (JSON)', value: 'plan' },
					{ name: 'Request in Plain Language', value: 'request' },
				],
				default: 'plan',
			},
			{
				displayName: 'Request',
				name: 'request',
				type: 'string',
				typeOptions: { rows: 4 },
				required: true,
				displayOptions: { show: { resource: ['job', 'plan'], batchInput: ['request'] } },
				default: '',
				placeholder: 'Summarise the open issues of acme/api into a Notion page',
				description: 'What the job should do; the planner model turns it into a plan',
			},
			{
				displayName: 'Plan',
				name: 'plan',
				type: 'json',
				required: true,
				displayOptions: { show: { resource: ['job', 'plan'], batchInput: ['plan'] } },
				default:
					'{\n  "nodes": [\n    {"id": "hello", "tool": "everything.echo", "args": {"message": "hi"}}\n  ],\n  "output": "${nodes.hello.output}"\n}',
				description:
					'Nodes and their output; refer to other nodes\' outputs as ${nodes.ID.output}, which n8n expressions leave alone',
			},
			{
				displayName: 'Options',
				name: 'jobOptions',
				type: 'collection',
				placeholder: 'Add Option',
				displayOptions: jobFields(['send', 'submit', 'submitAndWait']),
				default: {},
				options: [
					{
						displayName: 'Idempotency Key',
						name: 'idempotencyKey',
						type: 'string',
						default: '',
						description:
							'Orch answers the same job again for a repeated key. Submit and Wait uses one per execution and node by default, so Retry On Fail never makes a second job.',
					},
					{
						displayName: 'Max Attempts',
						name: 'maxAttempts',
						type: 'number',
						typeOptions: { minValue: 1, maxValue: 20 },
						default: 3,
					},
					{
						displayName: 'Metadata (JSON)',
						name: 'metadata',
						type: 'json',
						default: '{}',
						description: 'Returned with the job and in the callback as given',
					},
					{
						displayName: 'Model',
						name: 'model',
						type: 'string',
						default: '',
						description: 'Chat: the model that answers. Batch: the planner model.',
					},
					{
						displayName: 'Obsidian Path',
						name: 'obsidianPath',
						type: 'string',
						default: '',
						placeholder: 'Inbox/{date}-{slug}-{ID}.md',
						description: "The note's vault path in the callback payload",
					},
					{
						displayName: 'Session ID',
						name: 'sessionId',
						type: 'string',
						default: '',
						description: 'Chat: continue this conversation',
					},
					{
						displayName: 'System Prompt',
						name: 'system',
						type: 'string',
						default: '',
						description: 'Chat only',
					},
					{
						displayName: 'Tags',
						name: 'tags',
						type: 'string',
						default: '',
						description: "Comma-separated tags of the note's front matter",
					},
					{
						displayName: 'Title',
						name: 'title',
						type: 'string',
						default: '',
						description: 'Title of the note in the callback payload',
					},
					{
						displayName: 'Tools',
						name: 'tools',
						type: 'string',
						default: '',
						description: 'Batch from a request: comma-separated server.tool names the planner may use',
					},
				],
			},
			{
				displayName: 'Wait Options',
				name: 'waitOptions',
				type: 'collection',
				placeholder: 'Add Option',
				displayOptions: { show: { operation: ['submitAndWait'] } },
				default: {},
				options: [
					{
						displayName: 'Include Progress',
						name: 'progress',
						type: 'boolean',
						default: false,
						description:
							'Whether to ask for progress callbacks too; the execution still resumes only once, on the first callback',
					},
					{
						displayName: 'Limit Wait Time (Minutes)',
						name: 'limitMinutes',
						type: 'number',
						typeOptions: { minValue: 0 },
						default: 0,
						description: 'Resume with no callback data after this long; 0 waits until Orch calls back',
					},
					{
						displayName: 'Verify Signature',
						name: 'verifySignature',
						type: 'boolean',
						default: true,
						description:
							"Whether to accept only callbacks signed with the key's signing secret (Orch signs every callback of a job submitted with that key)",
					},
				],
			},

			// ----- job by id -----
			{
				displayName: 'Job ID',
				name: 'jobId',
				type: 'string',
				required: true,
				displayOptions: { show: { resource: ['job'], operation: ['get', 'result', 'cancel'] } },
				default: '',
			},
			{
				displayName: 'Return All',
				name: 'returnAll',
				type: 'boolean',
				displayOptions: { show: { resource: ['job'], operation: ['list'] } },
				default: false,
				description: 'Whether to return all results or only up to a given limit',
			},
			{
				displayName: 'Limit',
				name: 'limit',
				type: 'number',
				typeOptions: { minValue: 1 },
				displayOptions: { show: { resource: ['job'], operation: ['list'], returnAll: [false] } },
				default: 50,
				description: 'Max number of results to return',
			},
			{
				displayName: 'Filters',
				name: 'filters',
				type: 'collection',
				placeholder: 'Add Filter',
				displayOptions: { show: { resource: ['job'], operation: ['list'] } },
				default: {},
				options: [
					{
						displayName: 'Kind',
						name: 'kind',
						type: 'options',
						options: [
							{ name: 'Batch', value: 'batch' },
							{ name: 'Chat', value: 'chat' },
							{ name: 'Delivery', value: 'delivery' },
						],
						default: 'chat',
					},
					{
						displayName: 'Status',
						name: 'status',
						type: 'options',
						options: [
							{ name: 'Cancelled', value: 'cancelled' },
							{ name: 'Failed', value: 'failed' },
							{ name: 'Queued', value: 'queued' },
							{ name: 'Running', value: 'running' },
							{ name: 'Succeeded', value: 'succeeded' },
						],
						default: 'succeeded',
					},
				],
			},

			// ----- tools -----
			{
				displayName: 'Tool Name or ID',
				name: 'tool',
				type: 'options',
				typeOptions: { loadOptionsMethod: 'getTools' },
				required: true,
				displayOptions: { show: { resource: ['tool'], operation: ['call'] } },
				default: '',
				description:
					'Server and tool as server.tool. Choose from the list, or specify an ID using an <a href="https://docs.n8n.io/code/expressions/">expression</a>.',
			},
			{
				displayName: 'Arguments Input',
				name: 'argumentsInput',
				type: 'options',
				displayOptions: { show: { resource: ['tool'], operation: ['call'] } },
				options: [
					{ name: "Form From the Tool's Schema", value: 'form' },
					{ name: 'JSON', value: 'json' },
				],
				default: 'form',
			},
			{
				displayName: 'Arguments',
				name: 'arguments',
				type: 'resourceMapper',
				noDataExpression: true,
				default: { mappingMode: 'defineBelow', value: null },
				required: true,
				typeOptions: {
					loadOptionsDependsOn: ['tool'],
					resourceMapper: {
						resourceMapperMethod: 'getToolFields',
						mode: 'add',
						fieldWords: { singular: 'argument', plural: 'arguments' },
						addAllFields: true,
						multiKeyMatch: false,
						supportAutoMap: false,
					},
				},
				displayOptions: { show: { resource: ['tool'], operation: ['call'], argumentsInput: ['form'] } },
			},
			{
				displayName: 'Arguments (JSON)',
				name: 'argumentsJson',
				type: 'json',
				displayOptions: { show: { resource: ['tool'], operation: ['call'], argumentsInput: ['json'] } },
				default: '{}',
			},

			// ----- sessions and servers -----
			{
				displayName: 'Session ID',
				name: 'sessionId',
				type: 'string',
				required: true,
				displayOptions: { show: { resource: ['session'] } },
				default: '',
			},
			{
				displayName: 'Summarize',
				name: 'summarize',
				type: 'boolean',
				displayOptions: { show: { resource: ['session'], operation: ['exportMemory'] } },
				default: false,
				description: 'Whether to add a summary written by a model to the note',
			},
			{
				displayName: 'Server Name',
				name: 'server',
				type: 'string',
				required: true,
				displayOptions: { show: { resource: ['server'], operation: ['test'] } },
				default: '',
			},
		],
	};

	methods = {
		loadOptions: {
			async getTools(this: ILoadOptionsFunctions): Promise<INodePropertyOptions[]> {
				const list = (await orch(this, 'GET', '/v1/tools')) as { tools: IDataObject[] };
				return list.tools.map((t) => ({
					name: `${t.server}.${t.tool}`,
					value: `${t.server}.${t.tool}`,
					description: (t.description as string) ?? '',
				}));
			},
		},
		resourceMapping: {
			async getToolFields(this: ILoadOptionsFunctions): Promise<ResourceMapperFields> {
				const tool = this.getNodeParameter('tool', '') as string;
				const [server, ...rest] = tool.split('.');
				if (!server || rest.length === 0) return { fields: [] };
				const info = (await orch(
					this,
					'GET',
					`/v1/tools/${encodeURIComponent(server)}/${encodeURIComponent(rest.join('.'))}`,
				)) as IDataObject;
				const schema = (info.input_schema ?? info.inputSchema ?? {}) as IDataObject;
				const properties = (schema.properties ?? {}) as Record<string, IDataObject>;
				const required = (schema.required ?? []) as string[];
				const types: Record<string, ResourceMapperField['type']> = {
					string: 'string',
					number: 'number',
					integer: 'number',
					boolean: 'boolean',
					object: 'object',
					array: 'array',
				};
				const fields: ResourceMapperField[] = Object.entries(properties).map(([id, p]) => ({
					id,
					displayName: id,
					required: required.includes(id),
					defaultMatch: false,
					display: true,
					type: types[String(p.type)] ?? 'string',
					options: Array.isArray(p.enum)
						? (p.enum as string[]).map((v) => ({ name: String(v), value: v }))
						: undefined,
				}));
				return { fields };
			},
		},
	};

	async webhook(this: IWebhookFunctions): Promise<IWebhookResponseData> {
		const req = this.getRequestObject();
		const options = this.getNodeParameter('waitOptions', {}) as IDataObject;
		if (options.verifySignature !== false) {
			const credentials = await this.getCredentials('orchApi');
			const headers = this.getHeaderData() as IDataObject;
			const raw: Buffer = (req as any).rawBody ?? Buffer.from(JSON.stringify(this.getBodyData()));
			const ok = signatureValid(
				keySigningSecret(String(credentials.apiKey)),
				String(headers['webhook-id'] ?? ''),
				String(headers['webhook-timestamp'] ?? ''),
				raw,
				String(headers['webhook-signature'] ?? ''),
			);
			if (!ok) {
				const res = this.getResponseObject();
				res.status(401).json({ error: 'the callback is not signed with this credential\'s key' });
				return { noWebhookResponse: true };
			}
		}
		return { workflowData: [[{ json: this.getBodyData() }]] };
	}

	async execute(this: IExecuteFunctions): Promise<INodeExecutionData[][]> {
		const items = this.getInputData();
		const resource = this.getNodeParameter('resource', 0) as string;
		const operation = this.getNodeParameter('operation', 0) as string;

		if (operation === 'submitAndWait') {
			// One job per execution (the first item), as n8n's send-and-wait nodes do:
			// the execution waits once, for Orch's callback to its own resume URL.
			const jobType = resource === 'chat' ? 'chat' : 'batch';
			const body = jobBody(this, jobType, 0);
			const waitOptions = this.getNodeParameter('waitOptions', 0, {}) as IDataObject;
			const idempotencyKey = (body.idempotencyKey as string) || `n8n-${this.getExecutionId()}-${this.getNode().id}`;
			delete body.idempotencyKey;
			const events = ['succeeded', 'failed', 'cancelled'];
			if (waitOptions.progress) events.push('progress');
			body.callback = { url: this.getSignedResumeUrl(), events };
			this.setSignatureValidationRequired();
			await orch(this, 'POST', `/v1/jobs/${jobType}`, {
				body,
				headers: { 'Idempotency-Key': idempotencyKey },
			});
			const minutes = Number(waitOptions.limitMinutes ?? 0);
			const waitTill = minutes > 0 ? new Date(Date.now() + minutes * 60_000) : WAIT_INDEFINITELY;
			await this.putExecutionToWait(waitTill);
			return [items.slice(0, 1)];
		}

		const out: INodeExecutionData[] = [];
		for (let i = 0; i < items.length; i++) {
			try {
				const results = await runOne(this, resource, operation, i);
				for (const json of results) out.push({ json, pairedItem: { item: i } });
			} catch (error) {
				if (this.continueOnFail()) {
					out.push({ json: { error: (error as Error).message }, pairedItem: { item: i } });
					continue;
				}
				throw error;
			}
		}
		return [out];
	}
}

async function runOne(ctx: IExecuteFunctions, resource: string, operation: string, i: number): Promise<IDataObject[]> {
	const id = (name: string) => encodeURIComponent(ctx.getNodeParameter(name, i) as string);
	switch (`${resource}:${operation}`) {
		case 'chat:send': {
			const options = ctx.getNodeParameter('jobOptions', i, {}) as IDataObject;
			const messages: IDataObject[] = [];
			if (options.system) messages.push({ role: 'system', content: options.system });
			messages.push({ role: 'user', content: ctx.getNodeParameter('prompt', i) as string });
			const headers: IDataObject = {};
			if (options.sessionId) headers['X-Session-ID'] = options.sessionId;
			const model = (options.model as string) || (ctx.getNodeParameter('model', i) as string) || 'auto';
			const answer = await orch(ctx, 'POST', '/v1/chat/completions', {
				body: { model, messages, stream: false },
				headers,
			});
			return [
				{
					text: answer.choices?.[0]?.message?.content ?? '',
					model: answer.model,
					usage: answer.usage,
					id: answer.id,
					session_id: (options.sessionId as string) || undefined,
				},
			];
		}
		case 'chat:submit':
		case 'job:submit': {
			const jobType = resource === 'chat' ? 'chat' : 'batch';
			const body = jobBody(ctx, jobType, i);
			const headers: IDataObject = {};
			if (body.idempotencyKey) headers['Idempotency-Key'] = body.idempotencyKey;
			delete body.idempotencyKey;
			return [await orch(ctx, 'POST', `/v1/jobs/${jobType}`, { body, headers })];
		}
		case 'job:get':
			return [await orch(ctx, 'GET', `/v1/jobs/${id('jobId')}`)];
		case 'job:result':
			return [await orch(ctx, 'GET', `/v1/jobs/${id('jobId')}/result`)];
		case 'job:cancel':
			return [await orch(ctx, 'POST', `/v1/jobs/${id('jobId')}/cancel`)];
		case 'job:list': {
			const returnAll = ctx.getNodeParameter('returnAll', i) as boolean;
			const limit = returnAll ? Infinity : (ctx.getNodeParameter('limit', i) as number);
			const filters = ctx.getNodeParameter('filters', i, {}) as IDataObject;
			const jobs: IDataObject[] = [];
			let cursor: string | undefined;
			do {
				const qs: IDataObject = { ...filters, limit: Math.min(200, limit - jobs.length) };
				if (cursor) qs.cursor = cursor;
				const page = await orch(ctx, 'GET', '/v1/jobs', { qs });
				jobs.push(...(page.jobs as IDataObject[]));
				cursor = page.next_cursor ?? undefined;
			} while (cursor && jobs.length < limit);
			return jobs.slice(0, limit);
		}
		case 'plan:preview':
		case 'plan:mermaid': {
			const body: IDataObject =
				(ctx.getNodeParameter('batchInput', i) as string) === 'plan'
					? { plan: parseJson(ctx, 'plan', i) }
					: { request: ctx.getNodeParameter('request', i) as string };
			if (operation === 'preview') return [await orch(ctx, 'POST', '/v1/plans', { body })];
			const mermaid = await orch(ctx, 'POST', '/v1/plans', { body, qs: { format: 'mermaid' }, text: true });
			return [{ mermaid: String(mermaid) }];
		}
		case 'tool:list':
			return ((await orch(ctx, 'GET', '/v1/tools')) as { tools: IDataObject[] }).tools;
		case 'tool:call': {
			const tool = ctx.getNodeParameter('tool', i) as string;
			const [server, ...rest] = tool.split('.');
			if (!server || rest.length === 0) {
				throw new NodeOperationError(ctx.getNode(), `Tool must be server.tool; got "${tool}"`, { itemIndex: i });
			}
			let args: IDataObject;
			if ((ctx.getNodeParameter('argumentsInput', i) as string) === 'json') {
				args = parseJson(ctx, 'argumentsJson', i);
			} else {
				args = (ctx.getNodeParameter('arguments.value', i, {}) as IDataObject) ?? {};
				for (const key of Object.keys(args)) if (args[key] === null || args[key] === '') delete args[key];
			}
			return [
				await orch(ctx, 'POST', `/v1/tools/${encodeURIComponent(server)}/${encodeURIComponent(rest.join('.'))}`, {
					body: { arguments: args },
				}),
			];
		}
		case 'session:get':
			return [await orch(ctx, 'GET', `/v1/sessions/${id('sessionId')}`)];
		case 'session:exportMemory': {
			const qs: IDataObject = { format: 'json' };
			if (ctx.getNodeParameter('summarize', i) as boolean) qs.summarize = true;
			return [await orch(ctx, 'GET', `/v1/sessions/${id('sessionId')}/memory`, { qs })];
		}
		case 'session:delete':
			await orch(ctx, 'DELETE', `/v1/sessions/${id('sessionId')}`);
			return [{ deleted: true, session_id: ctx.getNodeParameter('sessionId', i) as string }];
		case 'server:list':
			return ((await orch(ctx, 'GET', '/v1/servers')) as { servers: IDataObject[] }).servers;
		case 'server:test':
			return [await orch(ctx, 'POST', `/v1/servers/${id('server')}/test`)];
		default:
			throw new NodeOperationError(ctx.getNode(), `Unknown operation ${resource}:${operation}`, { itemIndex: i });
	}
}
